//! A job's privacy ledger: every spend recorded, and a budget that refuses a round
//! which would exceed it (checked before the round, never after).

use crate::rdp::{rdp_poisson_subsampled_gaussian, AccountingError, EpsilonAtDelta, RdpAccountant};
use crate::store_dp::RoundMechanism;

/// The most a job may spend.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PrivacyBudget {
    pub epsilon: f64,
    pub delta: f64,
}

/// One recorded spend: a round (or a local training run) of a subsampled Gaussian.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LedgerEntry {
    pub round: u64,
    pub mechanism: String,
    pub sampling_rate: f64,
    pub noise_multiplier: f64,
    pub steps: u64,
    /// Total ε at the budget's δ after this entry.
    pub epsilon_after: f64,
    /// The entry's RDP at each of the ledger's orders, so that a ledger kept with a
    /// job's state can be rebuilt exactly when the job resumes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rdp: Vec<f64>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BudgetExceeded {
    #[error(
        "round {round} would spend the privacy budget: epsilon would reach {would_reach:.3} \
         at delta {delta:e}, over the budget of {budget:.3} (spent so far {spent:.3})"
    )]
    Exceeded {
        round: u64,
        spent: f64,
        would_reach: f64,
        budget: f64,
        delta: f64,
    },
    #[error(transparent)]
    Accounting(#[from] AccountingError),
}

/// Spends against a budget; what it records can be stored with the job's state.
#[derive(Debug, Clone)]
pub struct PrivacyLedger {
    budget: PrivacyBudget,
    accountant: RdpAccountant,
    entries: Vec<LedgerEntry>,
}

impl PrivacyLedger {
    pub fn new(budget: PrivacyBudget) -> Result<Self, AccountingError> {
        if !(budget.delta > 0.0 && budget.delta < 1.0) {
            return Err(AccountingError::Delta(budget.delta));
        }
        Ok(PrivacyLedger {
            budget,
            accountant: RdpAccountant::new(),
            entries: Vec::new(),
        })
    }

    pub fn budget(&self) -> PrivacyBudget {
        self.budget
    }

    pub fn entries(&self) -> &[LedgerEntry] {
        &self.entries
    }

    /// ε spent so far at the budget's δ.
    pub fn spent(&self) -> Result<EpsilonAtDelta, AccountingError> {
        self.accountant.epsilon(self.budget.delta)
    }

    /// Rebuilds a ledger from the entries it recorded (as kept with a job's state).
    pub fn restore(
        budget: PrivacyBudget,
        entries: Vec<LedgerEntry>,
    ) -> Result<Self, AccountingError> {
        let mut ledger = Self::new(budget)?;
        for e in &entries {
            if e.rdp.len() == ledger.accountant.orders().len() {
                ledger.accountant.compose_rdp(&e.rdp, 1);
            } else {
                ledger.accountant.compose_poisson_gaussian(
                    e.sampling_rate,
                    e.noise_multiplier,
                    e.steps,
                )?;
            }
        }
        ledger.entries = entries;
        Ok(ledger)
    }

    /// The accountant after `steps` more steps of a mechanism with RDP `per_step`, and
    /// its ε at the budget's δ; refuses (changing nothing) if that is over the budget.
    fn within_budget(
        &self,
        round: u64,
        per_step: &[f64],
        steps: u64,
    ) -> Result<(RdpAccountant, f64), BudgetExceeded> {
        let mut next = self.accountant.clone();
        next.compose_rdp(per_step, steps);
        let would_reach = next.epsilon(self.budget.delta)?.epsilon;
        if would_reach > self.budget.epsilon {
            return Err(BudgetExceeded::Exceeded {
                round,
                spent: self.spent()?.epsilon,
                would_reach,
                budget: self.budget.epsilon,
                delta: self.budget.delta,
            });
        }
        Ok((next, would_reach))
    }

    /// ε at the budget's δ if one more round of `mechanism` were spent; refuses (and
    /// changes nothing) if that is over the budget.
    pub fn check_round(
        &self,
        round: u64,
        mechanism: &RoundMechanism,
    ) -> Result<f64, BudgetExceeded> {
        let rdp = mechanism.rdp(self.accountant.orders())?;
        Ok(self.within_budget(round, &rdp, 1)?.1)
    }

    /// Record one round of `mechanism` if, and only if, it keeps the job within budget.
    pub fn spend_round(
        &mut self,
        round: u64,
        mechanism: &RoundMechanism,
    ) -> Result<&LedgerEntry, BudgetExceeded> {
        let rdp = mechanism.rdp(self.accountant.orders())?;
        let (next, would_reach) = self.within_budget(round, &rdp, 1)?;
        self.accountant = next;
        self.entries.push(LedgerEntry {
            round,
            mechanism: mechanism.name().to_string(),
            sampling_rate: 1.0,
            noise_multiplier: mechanism.noise_multiplier(),
            steps: 1,
            epsilon_after: would_reach,
            rdp,
        });
        Ok(&self.entries[self.entries.len() - 1])
    }

    /// Record `steps` steps of the Poisson-subsampled Gaussian if, and only if, they
    /// keep the job within budget.
    pub fn spend(
        &mut self,
        round: u64,
        sampling_rate: f64,
        noise_multiplier: f64,
        steps: u64,
    ) -> Result<&LedgerEntry, BudgetExceeded> {
        let per_step = rdp_poisson_subsampled_gaussian(
            sampling_rate,
            noise_multiplier,
            self.accountant.orders(),
        )?;
        let (next, would_reach) = self.within_budget(round, &per_step, steps)?;
        self.accountant = next;
        self.entries.push(LedgerEntry {
            round,
            mechanism: "poisson-subsampled gaussian".to_string(),
            sampling_rate,
            noise_multiplier,
            steps,
            epsilon_after: would_reach,
            rdp: Vec::new(),
        });
        Ok(&self.entries[self.entries.len() - 1])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_that_would_overspend_is_refused_and_changes_nothing() {
        let mut ledger = PrivacyLedger::new(PrivacyBudget {
            epsilon: 2.0,
            delta: 1e-5,
        })
        .unwrap();
        let mut round = 0;
        let err = loop {
            round += 1;
            match ledger.spend(round, 0.02, 1.2, 5) {
                Ok(e) => assert!(e.epsilon_after <= 2.0),
                Err(e) => break e,
            }
            assert!(round < 1000, "budget never reached");
        };
        let spent = ledger.spent().unwrap().epsilon;
        assert!(spent <= 2.0 && spent > 0.5, "{spent}");
        assert_eq!(ledger.entries().len() as u64, round - 1);
        match err {
            BudgetExceeded::Exceeded {
                would_reach,
                budget,
                ..
            } => assert!(would_reach > budget),
            other => panic!("{other}"),
        }
        assert!(err.to_string().contains("privacy budget"));
        // Refused, nothing recorded: the same answer again.
        assert!(ledger.spend(round, 0.02, 1.2, 5).is_err());
        assert_eq!(ledger.spent().unwrap().epsilon, spent);
    }

    #[test]
    fn a_restored_ledger_says_what_the_original_said() {
        let budget = PrivacyBudget {
            epsilon: 50.0,
            delta: 1e-5,
        };
        let mut ledger = PrivacyLedger::new(budget).unwrap();
        ledger.spend(1, 0.1, 1.0, 10).unwrap();
        let gaussian = RoundMechanism::Gaussian {
            noise_multiplier: 2.0,
        };
        let ddg = RoundMechanism::DistributedDiscreteGaussian {
            noise_multiplier: 2.0,
            stores: 20,
            clip_units: 1e6,
            dimension: 30,
        };
        ledger.spend_round(2, &gaussian).unwrap();
        ledger.spend_round(3, &ddg).unwrap();
        let json = serde_json::to_string(ledger.entries()).unwrap();
        let back = PrivacyLedger::restore(budget, serde_json::from_str(&json).unwrap()).unwrap();
        // JSON keeps f64 to within an ulp or so.
        let (a, b) = (back.spent().unwrap(), ledger.spent().unwrap());
        assert!((a.epsilon - b.epsilon).abs() < 1e-12 && a.order == b.order);
        assert_eq!(back.entries().len(), 3);
        assert_eq!(
            back.entries()[2].epsilon_after,
            ledger.entries()[2].epsilon_after
        );
        // The distributed noise with a fine encoding costs about what the Gaussian does.
        let (g, d) = (&ledger.entries()[1], &ledger.entries()[2]);
        let step_g = g.epsilon_after - ledger.entries()[0].epsilon_after;
        let step_d = d.epsilon_after - g.epsilon_after;
        assert!((step_d / step_g - 1.0).abs() < 0.2, "{step_g} {step_d}");
        // check_round refuses what spend_round would, and changes nothing.
        let mut tight = PrivacyLedger::new(PrivacyBudget {
            epsilon: 1.0,
            delta: 1e-5,
        })
        .unwrap();
        assert!(tight.check_round(1, &gaussian).is_err());
        assert!(tight.spend_round(1, &gaussian).is_err());
        assert!(tight.entries().is_empty());
    }
}
