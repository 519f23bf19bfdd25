//! The fedretail wire protocol: generated gRPC code for `proto/fedretail.proto`,
//! conversions between wire and core types, and the one mapping from service errors to
//! gRPC status codes (and back, for clients).
//!
//! ```
//! use fedretail_proto::{decode_tensor, encode_f64};
//! let t = encode_f64(&[1.0, 2.5]);
//! assert_eq!(decode_tensor(&t, 2, 1 << 20).unwrap().to_f64(), vec![1.0, 2.5]);
//! ```

mod convert;
mod error;
#[cfg(test)]
mod fuzz;
pub mod secagg;

pub mod v1 {
    tonic::include_proto!("fedretail.v1");
}

pub use convert::{
    decode_tensor, decode_update, encode_f32, encode_f64, encode_update, job_from_wire,
    job_to_wire, layout_from_wire, layout_to_wire, summary_from_wire, summary_to_wire,
    take_dense_f32, JobContextError, TensorError, MAX_SUMMARY_BYTES, MAX_TASK_SPEC_BYTES,
};
pub use error::{ErrorKind, ServiceError};

/// Protocol version spoken by this build; registration refuses any other. (3: SecAgg+
/// masks are expanded with the IETF ChaCha20 stream cipher, no longer `rand_chacha`.
/// 4: an update may be a sparse tensor, and the demand model has a season block per
/// category bucket.)
pub const PROTOCOL_VERSION: u32 = 4;

/// Default largest message accepted (64 MiB): enough for a 10M-parameter f32 update.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 << 20;

/// The metric a store may send with a plain update: the mean loss of the round's global
/// model on its training rows (the coordinator averages it, weighted by rows, into the
/// job's convergence curve).
pub const TRAIN_LOSS: &str = "train_loss";

/// An error with its causes, `a: b: c`: tonic's outer transport errors say little
/// alone ("transport error"), the cause names the certificate or the protocol.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}
