//! Why the coordinator refused a store's message. Each refusal names the problem in
//! words the store's operator can act on; the gRPC service turns its [`kind`] into a
//! status code in one place. A refused message changes nothing.
//!
//! [`kind`]: Refusal::kind

use fedretail_proto::{ErrorKind, PROTOCOL_VERSION};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    #[error("store '{0}' has not registered with this coordinator")]
    Unregistered(String),
    #[error(
        "session of store '{0}' is not current (the store registered again since); register again"
    )]
    StaleSession(String),
    #[error("store '{0}' is not part of this network")]
    NotInNetwork(String),
    #[error("wrong token for store '{0}'")]
    WrongToken(String),
    #[error("wrong enrolment token from store '{0}'")]
    WrongEnrolmentToken(String),
    #[error("store '{store}' must present the certificate it was enrolled with; it presented {presented}")]
    WrongCertificate { store: String, presented: String },
    #[error("store speaks protocol version {0}, this coordinator speaks {PROTOCOL_VERSION}")]
    Protocol(u32),
    #[error("store id must be 1-128 characters of letters, digits, '-', '_' or '.'")]
    BadStoreId,
    /// The task is not (or no longer) the store's current one.
    #[error("{0}")]
    NotCurrent(String),
    /// The store already answered this task: a replay.
    #[error("{0}")]
    Replay(String),
    /// The message itself does not check out: shape, values, kind of answer.
    #[error("{0}")]
    Malformed(String),
    #[error("too many failed registrations from {0} in the last minute; try again later")]
    RateLimited(String),
    #[error("store id '{0}' is in use by a store that is still polling; under open enrolment an id is taken until its store goes quiet for 90 s")]
    IdInUse(String),
    #[error("this network is full ({0} stores, max_stores); no new store may join")]
    Full(usize),
}

impl Refusal {
    /// The kind both ends of the wire understand.
    /// A short stable name for operators' counters.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Unregistered(_) => "unregistered",
            Refusal::StaleSession(_) => "stale_session",
            Refusal::NotInNetwork(_) => "not_in_network",
            Refusal::WrongToken(_) => "wrong_token",
            Refusal::WrongCertificate { .. } => "wrong_certificate",
            Refusal::WrongEnrolmentToken(_) => "wrong_enrolment_token",
            Refusal::Protocol(_) => "protocol_version",
            Refusal::BadStoreId => "bad_store_id",
            Refusal::Malformed(_) => "malformed",
            Refusal::NotCurrent(_) => "not_current",
            Refusal::Replay(_) => "replay",
            Refusal::RateLimited(_) => "rate_limited",
            Refusal::IdInUse(_) => "id_in_use",
            Refusal::Full(_) => "network_full",
        }
    }

    pub fn kind(&self) -> ErrorKind {
        match self {
            Refusal::Unregistered(_) | Refusal::StaleSession(_) | Refusal::NotInNetwork(_) => {
                ErrorKind::UnknownStore
            }
            Refusal::WrongToken(_)
            | Refusal::WrongEnrolmentToken(_)
            | Refusal::WrongCertificate { .. } => ErrorKind::Unauthenticated,
            Refusal::Protocol(_) => ErrorKind::Incompatible,
            Refusal::BadStoreId | Refusal::Malformed(_) => ErrorKind::InvalidUpdate,
            Refusal::NotCurrent(_) => ErrorKind::StaleTask,
            Refusal::Replay(_) => ErrorKind::Duplicate,
            Refusal::RateLimited(_) | Refusal::IdInUse(_) | Refusal::Full(_) => {
                ErrorKind::Unavailable
            }
        }
    }
}
