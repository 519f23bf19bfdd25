//! The one mapping between fedretail service errors and gRPC status codes. Servers
//! build every non-OK status through [`ServiceError::to_status`]; clients read them back
//! with [`ServiceError::from_status`], so the kind survives the wire.

use tonic::{Code, Status};

/// What went wrong, as both ends understand it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The message is malformed: wrong shape, NaN/inf, bad dtype.
    InvalidUpdate,
    /// The store is not part of this job, or its session is unknown.
    UnknownStore,
    /// The token does not match the store.
    Unauthenticated,
    /// The task is not current (an old round, or already answered: a replay).
    StaleTask,
    /// The update was already received for this task.
    Duplicate,
    /// The message exceeds the size limit.
    TooLarge,
    /// Different protocol version or task.
    Incompatible,
    /// The coordinator could not do its part (storage, internal invariant).
    Internal,
    /// Temporarily unable to serve: retry later.
    Unavailable,
}

impl ErrorKind {
    const ALL: [ErrorKind; 9] = [
        ErrorKind::InvalidUpdate,
        ErrorKind::UnknownStore,
        ErrorKind::Unauthenticated,
        ErrorKind::StaleTask,
        ErrorKind::Duplicate,
        ErrorKind::TooLarge,
        ErrorKind::Incompatible,
        ErrorKind::Internal,
        ErrorKind::Unavailable,
    ];

    pub fn code(self) -> Code {
        match self {
            ErrorKind::InvalidUpdate => Code::InvalidArgument,
            ErrorKind::UnknownStore => Code::NotFound,
            ErrorKind::Unauthenticated => Code::Unauthenticated,
            ErrorKind::StaleTask => Code::FailedPrecondition,
            ErrorKind::Duplicate => Code::AlreadyExists,
            ErrorKind::TooLarge => Code::ResourceExhausted,
            ErrorKind::Incompatible => Code::Unimplemented,
            ErrorKind::Internal => Code::Internal,
            ErrorKind::Unavailable => Code::Unavailable,
        }
    }

    fn from_code(code: Code) -> ErrorKind {
        ErrorKind::ALL
            .into_iter()
            .find(|k| k.code() == code)
            .unwrap_or(ErrorKind::Internal)
    }

    /// Whether a client should retry the same call later.
    pub fn is_transient(self) -> bool {
        matches!(self, ErrorKind::Unavailable)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ServiceError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ServiceError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ServiceError {
            kind,
            message: message.into(),
        }
    }

    pub fn to_status(&self) -> Status {
        Status::new(self.kind.code(), self.message.clone())
    }

    /// Read a status back. Transport failures (connection refused, reset, deadline)
    /// come back as `Unavailable`, so the client retries them.
    pub fn from_status(status: &Status) -> Self {
        let kind = match status.code() {
            Code::Unknown | Code::Cancelled | Code::DeadlineExceeded | Code::Aborted => {
                ErrorKind::Unavailable
            }
            code => ErrorKind::from_code(code),
        };
        ServiceError {
            kind,
            message: status.message().to_string(),
        }
    }
}

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Status {
        e.to_status()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_survives_the_round_trip() {
        for kind in ErrorKind::ALL {
            let e = ServiceError::new(kind, format!("because {kind:?}"));
            assert_eq!(ServiceError::from_status(&e.to_status()), e);
        }
    }

    #[test]
    fn transport_failures_are_transient() {
        let s = Status::new(Code::Unknown, "transport error");
        assert!(ServiceError::from_status(&s).kind.is_transient());
        assert!(!ErrorKind::InvalidUpdate.is_transient());
    }
}
