//! The attacks themselves: each recovers a record from its single-record update.

use fedretail_models::{example_gradient, ClassifierKind};
use fedretail_sim::attack::{deep_leakage, gradient, invert, invert_first_layer, relative_error};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

#[test]
fn both_mlp_attacks_recover_a_record_from_its_update() {
    let kind = ClassifierKind::Mlp { hidden: 4 };
    let x = [0.3, -1.2, 0.8, 0.1, -0.4];
    let w = kind.initial_parameters(x.len(), 3);
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    for y in [true, false] {
        let g = example_gradient(kind, &w, &x, y);
        let analytic = relative_error(&invert_first_layer(&g, x.len(), 4), &x);
        assert!(analytic < 1e-9, "{analytic}");
        let dlg = relative_error(&deep_leakage(kind, &w, &g, x.len(), 800, &mut rng), &x);
        assert!(dlg < 1e-2, "deep leakage error {dlg}");
    }
}

#[test]
fn a_single_record_update_reveals_the_record() {
    let x = [0.3, -1.2, 2.5];
    let w = [0.1, 0.2, -0.3, 0.05];
    for y in [true, false] {
        let e = relative_error(&invert(&gradient(&x, y, &w)), &x);
        assert!(e < 1e-12, "{e}");
    }
}
