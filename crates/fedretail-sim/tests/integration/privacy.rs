//! Store-level DP for the demand task on a small generated network: the accountant's
//! ε meets the target without overshooting, with central noise and with SecAgg+ and
//! distributed discrete Gaussian noise, and bad options are named.

use fedretail_sim::{run_dp_demand, DpDemandOptions};
use fedretail_synth::{generate_network, NetworkConfig};
use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dp_fedavg_spends_what_it_was_given_central_and_secure() {
    let dir = tempfile::tempdir().unwrap();
    let net = NetworkConfig {
        stores: 12,
        days: 200,
        young_fraction: 0.0,
        seed: 9,
        ..Default::default()
    };
    generate_network(&net, dir.path()).unwrap();
    for secure in [false, true] {
        let mut o = DpDemandOptions::new(dir.path().to_path_buf());
        o.epsilons = vec![2.0];
        o.rounds = 4;
        o.secure = secure;
        let r = run_dp_demand(&o, Arc::new(|_| {})).await.unwrap();
        assert_eq!(r.stores, 12);
        assert_eq!(r.rows.len(), 2, "no-DP row and one epsilon");
        let dp = &r.rows[1];
        let spent = dp.epsilon_spent.unwrap();
        assert!(
            spent <= 2.0 * (1.0 + 1e-6) && spent > 1.8,
            "secure={secure}: {spent}"
        );
        assert!(dp.noise_multiplier.unwrap() > 0.0);
        for row in &r.rows {
            assert!(row.median_wape.is_finite() && row.pooled_wape.is_finite());
        }
    }
    let mut bad = DpDemandOptions::new(dir.path().to_path_buf());
    bad.sampling_rate = 0.0;
    let err = run_dp_demand(&bad, Arc::new(|_| {})).await.unwrap_err();
    assert!(err.to_string().contains("sampling rate"), "{err}");
}
