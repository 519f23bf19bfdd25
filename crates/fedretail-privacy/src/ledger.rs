//! A job's privacy ledger: every spend recorded, and a budget that refuses a round
//! which would exceed it (checked before the round, never after).

use crate::rdp::{AccountingError, EpsilonAtDelta, RdpAccountant};

/// The most a job may spend.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PrivacyBudget {
    pub epsilon: f64,
    pub delta: f64,
}

/// One recorded spend: a round (or a local training run) of a subsampled Gaussian.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LedgerEntry {
    pub round: u64,
    pub sampling_rate: f64,
    pub noise_multiplier: f64,
    pub steps: u64,
    /// Total ε at the budget's δ after this entry.
    pub epsilon_after: f64,
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

    /// Record a round's spend if, and only if, it keeps the job within budget.
    pub fn spend(
        &mut self,
        round: u64,
        sampling_rate: f64,
        noise_multiplier: f64,
        steps: u64,
    ) -> Result<&LedgerEntry, BudgetExceeded> {
        let next = self
            .accountant
            .after(sampling_rate, noise_multiplier, steps)?;
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
        self.accountant = next;
        self.entries.push(LedgerEntry {
            round,
            sampling_rate,
            noise_multiplier,
            steps,
            epsilon_after: would_reach,
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
}
