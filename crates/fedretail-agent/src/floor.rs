//! The least privacy a store accepts, from its own config: the agent sits out a job
//! that promises less, and refuses any round that asks for less than the job promised
//! (a coordinator could announce one thing and ask another).

use fedretail_proto::v1;
use serde::Deserialize;

/// A store's privacy floor. Everything is off by default (the store trusts the job).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrivacyFloor {
    /// Take part only when updates travel through secure aggregation.
    pub require_secure_aggregation: bool,
    /// Largest L2 clip accepted on this store's update; a job without a clip is refused.
    pub max_clip: Option<f64>,
    /// Least noise accepted, as the sum's standard deviation in clips. Only noise the
    /// stores add themselves counts (local, or distributed under secure aggregation):
    /// noise the coordinator promises to add is not something a store can check.
    pub min_noise_multiplier: Option<f64>,
    /// Largest ε budget accepted (at a δ of at most `max_delta`); a job without a
    /// budget is refused.
    pub max_epsilon: Option<f64>,
    pub max_delta: Option<f64>,
}

impl PrivacyFloor {
    /// Whether a job's promised privacy meets the floor; the reason when it does not.
    pub fn check_job(&self, p: Option<&v1::JobPrivacy>) -> Result<(), String> {
        let none = v1::JobPrivacy::default();
        let p = p.unwrap_or(&none);
        if self.require_secure_aggregation && !p.secure_aggregation {
            return Err("this store requires secure aggregation and the job has none".into());
        }
        self.check_clip(p.clip)?;
        if let Some(min) = self.min_noise_multiplier {
            let verifiable = matches!(p.noise.as_str(), "local" | "distributed");
            if !verifiable || p.noise_multiplier < min {
                return Err(format!(
                    "this store requires noise it adds itself (local or distributed) of at \
                     least {min} clips; the job has {} noise of {} clips",
                    if p.noise.is_empty() { "no" } else { &p.noise },
                    p.noise_multiplier
                ));
            }
        }
        self.check_budget(p)
    }

    fn check_clip(&self, clip: f64) -> Result<(), String> {
        match self.max_clip {
            Some(max) if !(clip > 0.0 && clip <= max) => Err(format!(
                "this store requires its update clipped to at most {max}; {}",
                if clip > 0.0 {
                    format!("the clip is {clip}")
                } else {
                    "nothing is clipped".to_string()
                }
            )),
            _ => Ok(()),
        }
    }

    fn check_budget(&self, p: &v1::JobPrivacy) -> Result<(), String> {
        if let Some(max) = self.max_epsilon {
            if !(p.budget_epsilon > 0.0 && p.budget_epsilon <= max) {
                return Err(format!(
                    "this store requires a privacy budget of at most epsilon {max}; the job {}",
                    if p.budget_epsilon > 0.0 {
                        format!("sets {}", p.budget_epsilon)
                    } else {
                        "sets none".to_string()
                    }
                ));
            }
        }
        match self.max_delta {
            Some(max) if !(p.delta > 0.0 && p.delta <= max) => Err(format!(
                "this store requires delta at most {max}; the job's is {}",
                p.delta
            )),
            _ => Ok(()),
        }
    }

    /// Whether what a round actually asks of this store meets the floor.
    pub fn check_round(
        &self,
        privacy: Option<&v1::UpdatePrivacy>,
        secure: Option<&v1::SecureAggregation>,
    ) -> Result<(), String> {
        if self.require_secure_aggregation && secure.is_none() {
            return Err(
                "the round asks for a plain update; this store requires secure aggregation".into(),
            );
        }
        let clip = privacy.map_or(0.0, |p| p.clip);
        self.check_clip(clip)?;
        if let Some(min) = self.min_noise_multiplier {
            let local = privacy.map_or(0.0, |p| p.local_noise_stddev);
            let adds_share = secure.is_some_and(|s| s.store_noise_stddev_units > 0.0);
            // Local noise is checkable here in full; a distributed share only in that
            // this store adds one (its size depends on the other stores' shares).
            if !(adds_share || (clip > 0.0 && local / clip >= min)) {
                return Err(format!(
                    "the round adds less noise at this store than its floor of {min} clips"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(secure: bool, noise: &str, clip: f64, z: f64, eps: f64) -> v1::JobPrivacy {
        v1::JobPrivacy {
            secure_aggregation: secure,
            noise: noise.into(),
            clip,
            noise_multiplier: z,
            budget_epsilon: eps,
            delta: 1e-5,
        }
    }

    #[test]
    fn no_floor_accepts_everything() {
        let f = PrivacyFloor::default();
        assert!(f.check_job(None).is_ok());
        assert!(f.check_round(None, None).is_ok());
    }

    #[test]
    fn a_job_below_the_floor_is_refused_with_the_reason() {
        let f = PrivacyFloor {
            require_secure_aggregation: true,
            max_clip: Some(1.0),
            min_noise_multiplier: Some(0.8),
            max_epsilon: Some(8.0),
            max_delta: Some(1e-5),
        };
        assert!(f
            .check_job(Some(&job(true, "distributed", 0.5, 1.0, 4.0)))
            .is_ok());
        let refused = [
            (
                job(false, "distributed", 0.5, 1.0, 4.0),
                "secure aggregation",
            ),
            (
                job(true, "distributed", 0.0, 1.0, 4.0),
                "nothing is clipped",
            ),
            (job(true, "distributed", 2.0, 1.0, 4.0), "the clip is 2"),
            (job(true, "central", 0.5, 1.0, 4.0), "central noise"),
            (job(true, "distributed", 0.5, 0.5, 4.0), "of 0.5 clips"),
            (job(true, "distributed", 0.5, 1.0, 0.0), "sets none"),
            (job(true, "distributed", 0.5, 1.0, 16.0), "sets 16"),
        ];
        for (j, says) in refused {
            let e = f.check_job(Some(&j)).unwrap_err();
            assert!(e.contains(says), "{j:?}: {e}");
        }
        assert!(f
            .check_job(None)
            .unwrap_err()
            .contains("secure aggregation"));
    }

    #[test]
    fn a_round_asking_less_than_the_floor_is_refused() {
        let f = PrivacyFloor {
            require_secure_aggregation: true,
            max_clip: Some(1.0),
            min_noise_multiplier: Some(0.8),
            ..Default::default()
        };
        let update = |clip: f64, local: f64| v1::UpdatePrivacy {
            clip,
            local_noise_stddev: local,
            weight: 1.0,
        };
        let secure = |units: f64| v1::SecureAggregation {
            store_noise_stddev_units: units,
            ..Default::default()
        };
        assert!(f
            .check_round(Some(&update(0.5, 0.0)), Some(&secure(3.0)))
            .is_ok());
        // Told to send the plain update, or to clip less, or to add no noise: refused.
        assert!(f.check_round(Some(&update(0.5, 0.0)), None).is_err());
        assert!(f
            .check_round(Some(&update(0.0, 0.0)), Some(&secure(3.0)))
            .is_err());
        assert!(f
            .check_round(Some(&update(5.0, 0.0)), Some(&secure(3.0)))
            .is_err());
        assert!(f
            .check_round(Some(&update(0.5, 0.0)), Some(&secure(0.0)))
            .is_err());
        // Local noise counts when it is at least the floor.
        let local = PrivacyFloor {
            min_noise_multiplier: Some(0.8),
            ..Default::default()
        };
        assert!(local.check_round(Some(&update(0.5, 0.4)), None).is_ok());
        assert!(local.check_round(Some(&update(0.5, 0.3)), None).is_err());
    }
}
