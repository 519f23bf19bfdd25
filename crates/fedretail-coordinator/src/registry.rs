//! The stores the coordinator knows: who may register (credentials or an open
//! enrolment token), each store's current session, and whether it is still polling.
//! The registry outlives jobs: a store registers once and serves job after job.

use crate::config::{CoordinatorConfig, StoreCredential};
use crate::machine::Refusal;
use fedretail_proto::PROTOCOL_VERSION;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

const MAX_NAME_LEN: usize = 128;
/// A store that has not polled for this long is not offered work.
pub(crate) const LIVENESS: Duration = Duration::from_secs(90);

pub(crate) struct StoreEntry {
    pub session_id: String,
    pub business_type: String,
    pub last_seen: Instant,
    pub saw_finish: bool,
}

/// What a store sends to register.
pub(crate) struct Registration<'a> {
    pub store_id: &'a str,
    pub token: &'a str,
    /// SHA-256 (hex) of the certificate the store presented under mutual TLS.
    pub certificate: Option<&'a str>,
    pub business_type: &'a str,
    pub protocol_version: u32,
}

pub(crate) struct StoreRegistry {
    credentials: HashMap<String, StoreCredential>,
    open_token: Option<String>,
    max_stores: usize,
    pub stores: BTreeMap<String, StoreEntry>,
}

impl StoreRegistry {
    pub fn new(config: &CoordinatorConfig) -> Self {
        StoreRegistry {
            credentials: config
                .stores
                .iter()
                .map(|c| (c.store_id.clone(), c.clone()))
                .collect(),
            open_token: config.open_token.clone(),
            max_stores: config.max_stores,
            stores: BTreeMap::new(),
        }
    }

    /// Checks who the store says it is; Ok(()) if it may register.
    pub fn admit(&self, r: &Registration<'_>) -> Result<(), Refusal> {
        if r.protocol_version != PROTOCOL_VERSION {
            return Err(Refusal::Protocol(r.protocol_version));
        }
        if !valid_store_id(r.store_id) {
            return Err(Refusal::BadStoreId);
        }
        if !self.credentials.is_empty() {
            let Some(c) = self.credentials.get(r.store_id) else {
                return Err(Refusal::NotInNetwork(r.store_id.to_string()));
            };
            if let Some(expected) = &c.certificate_sha256 {
                let presented = r.certificate.unwrap_or("");
                if !constant_time_eq(&expected.to_ascii_lowercase(), presented) {
                    return Err(Refusal::WrongCertificate {
                        store: r.store_id.to_string(),
                        presented: r
                            .certificate
                            .map_or("none".into(), |p| format!("sha256 {p}")),
                    });
                }
            }
            if !c.token.is_empty() && !constant_time_eq(&c.token, r.token) {
                return Err(Refusal::WrongToken(r.store_id.to_string()));
            }
            return self.check_room(r.store_id);
        }
        if let Some(t) = &self.open_token {
            if !constant_time_eq(t, r.token) {
                return Err(Refusal::WrongEnrolmentToken(r.store_id.to_string()));
            }
        }
        // Open enrolment cannot tell two holders of the token apart: a live store's id
        // is not handed to a newcomer (which would evict it mid-round).
        if self.is_live(r.store_id) {
            return Err(Refusal::IdInUse(r.store_id.to_string()));
        }
        self.check_room(r.store_id)
    }

    /// A new store id is taken only while the network has room.
    fn check_room(&self, store_id: &str) -> Result<(), Refusal> {
        let known = self.stores.contains_key(store_id);
        if !known && self.stores.len() >= self.max_stores {
            return Err(Refusal::Full(self.max_stores));
        }
        Ok(())
    }

    /// Registers an admitted store under a new session (replacing any older one);
    /// returns the session id and how many stores are registered.
    pub fn register(&mut self, r: &Registration<'_>) -> (String, usize) {
        let session_id = format!("{:032x}", rand::random::<u128>());
        self.stores.insert(
            r.store_id.to_string(),
            StoreEntry {
                session_id: session_id.clone(),
                business_type: r.business_type.chars().take(MAX_NAME_LEN).collect(),
                last_seen: Instant::now(),
                saw_finish: false,
            },
        );
        (session_id, self.stores.len())
    }

    /// Ok if `session_id` is the store's current session; refreshes its liveness.
    pub fn check_session(&mut self, store_id: &str, session_id: &str) -> Result<(), Refusal> {
        match self.stores.get_mut(store_id) {
            None => Err(Refusal::Unregistered(store_id.to_string())),
            Some(e) if !constant_time_eq(&e.session_id, session_id) => {
                Err(Refusal::StaleSession(store_id.to_string()))
            }
            Some(e) => {
                e.last_seen = Instant::now();
                Ok(())
            }
        }
    }

    pub fn is_live(&self, store_id: &str) -> bool {
        self.stores
            .get(store_id)
            .is_some_and(|e| e.last_seen.elapsed() < LIVENESS)
    }

    pub fn business_type(&self, store_id: &str) -> String {
        self.stores
            .get(store_id)
            .map(|e| e.business_type.clone())
            .unwrap_or_default()
    }

    pub fn saw_finish(&mut self, store_id: &str) {
        if let Some(e) = self.stores.get_mut(store_id) {
            e.saw_finish = true;
        }
    }

    pub fn all_heard_finish(&self) -> bool {
        self.stores
            .values()
            .all(|e| e.saw_finish || e.last_seen.elapsed() > LIVENESS)
    }
}

fn constant_time_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn valid_store_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_NAME_LEN
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registration<'a>(store_id: &'a str, token: &'a str) -> Registration<'a> {
        Registration {
            store_id,
            token,
            certificate: None,
            business_type: "grocery",
            protocol_version: PROTOCOL_VERSION,
        }
    }

    #[test]
    fn open_enrolment_never_hands_a_live_stores_id_to_a_newcomer() {
        let config = CoordinatorConfig {
            open_token: Some("enrol".into()),
            ..CoordinatorConfig::from_toml("").unwrap()
        };
        let mut reg = StoreRegistry::new(&config);
        let r = registration("store-1", "enrol");
        assert!(reg.admit(&r).is_ok());
        reg.register(&r);
        // Another holder of the token claims the same id while the store polls.
        let e = reg.admit(&registration("store-1", "enrol")).unwrap_err();
        assert!(matches!(e, Refusal::IdInUse(_)), "{e}");
        assert!(matches!(
            reg.admit(&registration("store-2", "guess")),
            Err(Refusal::WrongEnrolmentToken(_))
        ));
    }

    #[test]
    fn a_full_network_takes_no_new_store_but_its_own_may_come_back() {
        let config = CoordinatorConfig {
            open_registration: true,
            max_stores: 1,
            ..CoordinatorConfig::from_toml("").unwrap()
        };
        let mut reg = StoreRegistry::new(&config);
        reg.register(&registration("a", ""));
        let e = reg.admit(&registration("b", "")).unwrap_err();
        assert!(e.to_string().contains("full (1 stores"), "{e}");
        // "a" went quiet long ago (its entry aged): it may register again.
        if let Some(entry) = reg.stores.get_mut("a") {
            entry.last_seen = Instant::now() - LIVENESS - Duration::from_secs(1);
        }
        assert!(reg.admit(&registration("a", "")).is_ok());
    }

    #[test]
    fn who_may_join_must_be_said() {
        let none = CoordinatorConfig::from_toml("").unwrap();
        let e = none.check_admission().unwrap_err().to_string();
        assert!(e.contains("open_registration = true"), "{e}");
        let open = CoordinatorConfig::from_toml("open_registration = true").unwrap();
        assert!(open.check_admission().is_ok());
    }
}
