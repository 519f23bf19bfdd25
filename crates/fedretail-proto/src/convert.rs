use crate::v1;
use fedretail_core::{
    decode_checked, CheckedTask, ModelLayout, Segment, TaskSpec, UpdateLimits, UpdatePrecision,
    UpdateRejection, UpdateVector,
};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TensorError {
    #[error("tensor dtype is unspecified or unknown ({0})")]
    UnknownDType(i32),
    #[error("tensor declares {declared} values but carries {bytes} bytes ({per} bytes each)")]
    LengthMismatch {
        declared: u64,
        bytes: usize,
        per: usize,
    },
    #[error("tensor has {got} values, expected {expected}")]
    WrongLength { expected: usize, got: u64 },
    #[error("tensor of {bytes} bytes exceeds the limit of {limit} bytes")]
    TooLarge { bytes: usize, limit: usize },
    #[error("layout is missing or invalid: {0}")]
    BadLayout(String),
    #[error("tensor value at index {index} is not finite ({value})")]
    NonFinite { index: usize, value: f64 },
    #[error("sparse tensor's indices: {0}")]
    BadIndices(String),
    #[error(transparent)]
    Rejected(#[from] UpdateRejection),
}

/// Largest task spec accepted from the wire; a real one is a few hundred bytes.
pub const MAX_TASK_SPEC_BYTES: usize = 64 << 10;
/// Longest run id a store accepts (a coordinator's are 32 hex digits).
pub const MAX_RUN_ID_BYTES: usize = 64;

/// Largest table summary a store may send (JSON).
pub const MAX_SUMMARY_BYTES: usize = 256 << 10;

/// A store's table summary as sent.
pub fn summary_to_wire(summary: &fedretail_core::tabular::TableSummary) -> String {
    // Plain data: serializing it cannot fail.
    serde_json::to_string(summary).unwrap_or_default()
}

/// A store's table summary as received, checked for size and shape.
pub fn summary_from_wire(text: &str) -> Result<fedretail_core::tabular::TableSummary, String> {
    if text.len() > MAX_SUMMARY_BYTES {
        return Err(format!(
            "table summary of {} bytes exceeds the limit of {MAX_SUMMARY_BYTES}",
            text.len()
        ));
    }
    let s: fedretail_core::tabular::TableSummary =
        serde_json::from_str(text).map_err(|e| format!("table summary is not valid: {e}"))?;
    let finite = s
        .columns
        .iter()
        .filter_map(|c| c.numeric)
        .all(|v| v.iter().all(|x| x.is_finite()) && v[0] >= 0.0);
    if !finite {
        return Err("table summary has a negative count or a value that is not finite".into());
    }
    Ok(s)
}

/// Why a job context from the wire cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum JobContextError {
    #[error("the task carries no job context")]
    Missing,
    #[error("task spec of {0} bytes exceeds the limit of {MAX_TASK_SPEC_BYTES}")]
    TooLarge(usize),
    #[error("run id of {0} bytes exceeds the limit of {MAX_RUN_ID_BYTES}")]
    RunIdTooLong(usize),
    #[error("task spec is not a known task with valid options: {0}")]
    BadSpec(String),
}

/// A job's context as the coordinator sends it with every task.
pub fn job_to_wire(job_id: &str, spec: &TaskSpec) -> v1::JobContext {
    v1::JobContext {
        job_id: job_id.to_string(),
        // A TaskSpec is plain data: serializing it cannot fail.
        task_spec: serde_json::to_string(spec).unwrap_or_default(),
        privacy: None,
        run_id: String::new(),
    }
}

/// The job id and checked task spec of a task from the coordinator.
pub fn job_from_wire(
    job: Option<&v1::JobContext>,
) -> Result<(String, CheckedTask), JobContextError> {
    let job = job.ok_or(JobContextError::Missing)?;
    if job.task_spec.len() > MAX_TASK_SPEC_BYTES {
        return Err(JobContextError::TooLarge(job.task_spec.len()));
    }
    if job.run_id.len() > MAX_RUN_ID_BYTES {
        return Err(JobContextError::RunIdTooLong(job.run_id.len()));
    }
    let spec: TaskSpec = serde_json::from_str(&job.task_spec)
        .map_err(|e| JobContextError::BadSpec(e.to_string()))?;
    let checked = spec
        .checked()
        .map_err(|e| JobContextError::BadSpec(e.to_string()))?;
    Ok((job.job_id.clone(), checked))
}

pub fn encode_f32(values: &[f32]) -> v1::Tensor {
    let mut data = Vec::with_capacity(values.len() * 4);
    for v in values {
        data.extend_from_slice(&v.to_le_bytes());
    }
    v1::Tensor {
        dtype: v1::Dtype::F32 as i32,
        len: values.len() as u64,
        data,
        indices: Vec::new(),
    }
}

pub fn encode_f64(values: &[f64]) -> v1::Tensor {
    let mut data = Vec::with_capacity(values.len() * 8);
    for v in values {
        data.extend_from_slice(&v.to_le_bytes());
    }
    v1::Tensor {
        dtype: v1::Dtype::F64 as i32,
        len: values.len() as u64,
        data,
        indices: Vec::new(),
    }
}

/// Encode an f64 update at the precision the task asked for; sparse when that is
/// smaller (a position costs 4 bytes beside its value).
pub fn encode_update(values: &[f64], precision: UpdatePrecision) -> v1::Tensor {
    let per = match precision {
        UpdatePrecision::F64 => 8,
        UpdatePrecision::F32 => 4,
    };
    let nonzero = values.iter().filter(|v| v.to_bits() != 0).count();
    if nonzero * (per + 4) < values.len() * per && values.len() <= u32::MAX as usize {
        return encode_sparse(values, precision);
    }
    match precision {
        UpdatePrecision::F64 => encode_f64(values),
        UpdatePrecision::F32 => {
            let f: Vec<f32> = values.iter().map(|&v| v as f32).collect();
            encode_f32(&f)
        }
    }
}

/// The values that are not +0.0 (by bits, so -0.0 is kept) and their positions.
fn encode_sparse(values: &[f64], precision: UpdatePrecision) -> v1::Tensor {
    let (mut data, mut indices) = (Vec::new(), Vec::new());
    for (i, &v) in values.iter().enumerate().filter(|(_, v)| v.to_bits() != 0) {
        indices.extend_from_slice(&(i as u32).to_le_bytes());
        match precision {
            UpdatePrecision::F64 => data.extend_from_slice(&v.to_le_bytes()),
            UpdatePrecision::F32 => data.extend_from_slice(&(v as f32).to_le_bytes()),
        }
    }
    let dtype = match precision {
        UpdatePrecision::F64 => v1::Dtype::F64,
        UpdatePrecision::F32 => v1::Dtype::F32,
    };
    v1::Tensor {
        dtype: dtype as i32,
        len: values.len() as u64,
        data,
        indices,
    }
}

/// Decodes a tensor, checking its size limit, declared and byte lengths, and that every
/// value is finite.
pub fn decode_tensor(
    t: &v1::Tensor,
    expected_len: usize,
    max_bytes: usize,
) -> Result<UpdateVector, TensorError> {
    // A model is not an update: name the bad value as the tensor's.
    decode_update(t, expected_len, max_bytes, &UpdateLimits::default()).map_err(|e| match e {
        TensorError::Rejected(UpdateRejection::NonFinite { index, value }) => {
            TensorError::NonFinite { index, value }
        }
        other => other,
    })
}

/// [`decode_tensor`], also refusing values beyond `limits`; the values are decoded
/// and checked in one pass over the bytes.
pub fn decode_update(
    t: &v1::Tensor,
    expected_len: usize,
    max_bytes: usize,
    limits: &UpdateLimits,
) -> Result<UpdateVector, TensorError> {
    let per = bytes_per_value(t, max_bytes)?;
    if !t.indices.is_empty() {
        return decode_sparse(t, expected_len, per, max_bytes, limits);
    }
    check_dense_length(t, expected_len, per)?;
    Ok(if per == 4 {
        UpdateVector::F32(decode_checked(&t.data, expected_len, limits)?)
    } else {
        UpdateVector::F64(decode_checked(&t.data, expected_len, limits)?)
    })
}

/// Takes the bytes of a dense f32 tensor, its sizes checked as [`decode_update`]
/// checks them, for a caller that checks the values as it folds them; None (the
/// tensor untouched) for any other tensor, which goes through [`decode_update`].
pub fn take_dense_f32(
    t: &mut v1::Tensor,
    expected_len: usize,
    max_bytes: usize,
) -> Result<Option<Vec<u8>>, TensorError> {
    let per = bytes_per_value(t, max_bytes)?;
    if per != 4 || !t.indices.is_empty() {
        return Ok(None);
    }
    check_dense_length(t, expected_len, per)?;
    Ok(Some(std::mem::take(&mut t.data)))
}

/// The tensor's size limit, then its dtype's bytes per value.
fn bytes_per_value(t: &v1::Tensor, max_bytes: usize) -> Result<usize, TensorError> {
    let bytes = t.data.len().saturating_add(t.indices.len());
    if bytes > max_bytes {
        return Err(TensorError::TooLarge {
            bytes,
            limit: max_bytes,
        });
    }
    match v1::Dtype::try_from(t.dtype) {
        Ok(v1::Dtype::F32) => Ok(4),
        Ok(v1::Dtype::F64) => Ok(8),
        _ => Err(TensorError::UnknownDType(t.dtype)),
    }
}

/// A dense tensor's declared length against its bytes and the model's length.
fn check_dense_length(t: &v1::Tensor, expected_len: usize, per: usize) -> Result<(), TensorError> {
    if (t.data.len() as u64) != t.len.saturating_mul(per as u64) {
        return Err(TensorError::LengthMismatch {
            declared: t.len,
            bytes: t.data.len(),
            per,
        });
    }
    if t.len != expected_len as u64 {
        return Err(TensorError::WrongLength {
            expected: expected_len,
            got: t.len,
        });
    }
    Ok(())
}

/// A sparse tensor: its positions checked (whole u32s, strictly increasing, inside
/// the length), its values decoded and checked against `limits` (the norm of the
/// values is the norm of the vector), then put in place in a zeroed vector. It may not
/// expand beyond `max_bytes` of dense values: a few bytes must not claim gigabytes.
fn decode_sparse(
    t: &v1::Tensor,
    expected_len: usize,
    per: usize,
    max_bytes: usize,
    limits: &UpdateLimits,
) -> Result<UpdateVector, TensorError> {
    if t.len != expected_len as u64 {
        return Err(TensorError::WrongLength {
            expected: expected_len,
            got: t.len,
        });
    }
    let dense = expected_len.saturating_mul(per);
    if dense > max_bytes {
        return Err(TensorError::TooLarge {
            bytes: dense,
            limit: max_bytes,
        });
    }
    if !t.indices.len().is_multiple_of(4) {
        let n = t.indices.len();
        return Err(TensorError::BadIndices(format!(
            "{n} bytes is not whole u32s"
        )));
    }
    let n = t.indices.len() / 4;
    if t.data.len() != n * per {
        return Err(TensorError::LengthMismatch {
            declared: n as u64,
            bytes: t.data.len(),
            per,
        });
    }
    let positions = sparse_positions(&t.indices, expected_len)?;
    // A bad value is named by its position in the vector, not in the list.
    let at_position = |e: UpdateRejection| match e {
        UpdateRejection::NonFinite { index, value } => UpdateRejection::NonFinite {
            index: positions.get(index).copied().unwrap_or(index),
            value,
        },
        other => other,
    };
    Ok(if per == 4 {
        let values: Vec<f32> = decode_checked(&t.data, n, limits).map_err(at_position)?;
        UpdateVector::F32(scatter(&positions, &values, expected_len))
    } else {
        let values: Vec<f64> = decode_checked(&t.data, n, limits).map_err(at_position)?;
        UpdateVector::F64(scatter(&positions, &values, expected_len))
    })
}

fn sparse_positions(indices: &[u8], len: usize) -> Result<Vec<usize>, TensorError> {
    let mut positions = Vec::with_capacity(indices.len() / 4);
    for (k, chunk) in indices.chunks_exact(4).enumerate() {
        let i = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) as usize;
        if i >= len {
            return Err(TensorError::BadIndices(format!(
                "position {i} (entry {k}) is outside a vector of {len}"
            )));
        }
        if positions.last().is_some_and(|&last| i <= last) {
            return Err(TensorError::BadIndices(format!(
                "position {i} (entry {k}) does not follow the one before it"
            )));
        }
        positions.push(i);
    }
    Ok(positions)
}

fn scatter<T: Copy + Default>(positions: &[usize], values: &[T], len: usize) -> Vec<T> {
    let mut out = vec![T::default(); len];
    for (&i, &v) in positions.iter().zip(values) {
        out[i] = v;
    }
    out
}

pub fn layout_to_wire(layout: &ModelLayout) -> v1::ModelLayout {
    v1::ModelLayout {
        segments: layout
            .segments()
            .iter()
            .map(|s| v1::Segment {
                name: s.name.clone(),
                len: s.len as u64,
                regularized: s.regularized,
            })
            .collect(),
    }
}

pub fn layout_from_wire(layout: Option<&v1::ModelLayout>) -> Result<ModelLayout, TensorError> {
    let layout = layout.ok_or_else(|| TensorError::BadLayout("missing".into()))?;
    ModelLayout::new(
        layout
            .segments
            .iter()
            .map(|s| Segment::new(s.name.clone(), s.len as usize, s.regularized))
            .collect(),
    )
    .map_err(|e| TensorError::BadLayout(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn f64_round_trip_is_exact(values in prop::collection::vec(any::<f64>().prop_filter("finite", |v| v.is_finite()), 0..200)) {
            let t = encode_f64(&values);
            prop_assert_eq!(decode_tensor(&t, values.len(), usize::MAX).unwrap(), UpdateVector::F64(values));
        }

        #[test]
        fn f32_round_trip_is_exact(values in prop::collection::vec(any::<f32>().prop_filter("finite", |v| v.is_finite()), 0..200)) {
            let t = encode_f32(&values);
            let back = decode_tensor(&t, values.len(), usize::MAX).unwrap();
            match back {
                UpdateVector::F32(b) => prop_assert!(b.iter().zip(&values).all(|(x, y)| x.to_bits() == y.to_bits())),
                _ => prop_assert!(false),
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(dtype in -2i32..4, len in 0u64..100, data in prop::collection::vec(any::<u8>(), 0..400)) {
            let t = v1::Tensor { dtype, len, data, indices: Vec::new() };
            let _ = decode_tensor(&t, len as usize, 1 << 20);
        }
    }

    #[test]
    fn job_contexts_round_trip_and_bad_specs_are_named() {
        let spec = fedretail_core::TaskKind::Churn.default_spec();
        let wire = job_to_wire("churn-1", &spec);
        let (id, checked) = job_from_wire(Some(&wire)).unwrap();
        assert_eq!((id.as_str(), checked.spec()), ("churn-1", &spec));
        let bad = v1::JobContext {
            job_id: "x".into(),
            task_spec: r#"{"kind":"teleport"}"#.into(),
            ..Default::default()
        };
        let e = job_from_wire(Some(&bad)).unwrap_err().to_string();
        assert!(e.contains("teleport"), "{e}");
        let huge = v1::JobContext {
            job_id: "x".into(),
            task_spec: " ".repeat(MAX_TASK_SPEC_BYTES + 1),
            ..Default::default()
        };
        assert!(matches!(
            job_from_wire(Some(&huge)),
            Err(JobContextError::TooLarge(_))
        ));
        assert_eq!(job_from_wire(None), Err(JobContextError::Missing));
        let long_run = v1::JobContext {
            run_id: "r".repeat(MAX_RUN_ID_BYTES + 1),
            ..wire
        };
        assert_eq!(
            job_from_wire(Some(&long_run)),
            Err(JobContextError::RunIdTooLong(MAX_RUN_ID_BYTES + 1))
        );
    }

    #[test]
    fn malformed_tensors_are_named() {
        let mut t = encode_f32(&[1.0, 2.0]);
        t.len = 3;
        assert!(matches!(
            decode_tensor(&t, 3, 1 << 20),
            Err(TensorError::LengthMismatch { .. })
        ));
        let t = encode_f32(&[1.0, 2.0]);
        assert_eq!(
            decode_tensor(&t, 3, 1 << 20),
            Err(TensorError::WrongLength {
                expected: 3,
                got: 2
            })
        );
        assert_eq!(
            decode_tensor(&t, 2, 4),
            Err(TensorError::TooLarge { bytes: 8, limit: 4 })
        );
        let t = v1::Tensor {
            dtype: 0,
            len: 0,
            data: vec![],
            indices: vec![],
        };
        assert_eq!(decode_tensor(&t, 0, 4), Err(TensorError::UnknownDType(0)));
        let t = encode_f32(&[1.0, f32::INFINITY]);
        let err = decode_tensor(&t, 2, 1 << 20).unwrap_err();
        assert!(
            matches!(err, TensorError::NonFinite { index: 1, .. }),
            "{err}"
        );
        assert!(
            err.to_string().starts_with("tensor value at index 1"),
            "{err}"
        );
    }

    /// A vector that is mostly zeros goes sparse and comes back with the same bits,
    /// -0.0 included; a dense one stays dense.
    #[test]
    fn mostly_zero_updates_go_sparse_and_come_back_bit_for_bit() {
        let mut v = vec![0.0; 1000];
        v[3] = 1.5;
        v[500] = -0.0;
        v[999] = -2.25e-300;
        for precision in [UpdatePrecision::F64, UpdatePrecision::F32] {
            let t = encode_update(&v, precision);
            assert_eq!(t.indices.len(), 12);
            let back = decode_update(&t, 1000, 1 << 20, &UpdateLimits::default()).unwrap();
            let want: Vec<u64> = match precision {
                UpdatePrecision::F64 => v.iter().map(|x| x.to_bits()).collect(),
                UpdatePrecision::F32 => v.iter().map(|&x| f64::from(x as f32).to_bits()).collect(),
            };
            let got: Vec<u64> = back.to_f64().iter().map(|x| x.to_bits()).collect();
            assert_eq!(got, want);
        }
        let dense: Vec<f64> = (0..100).map(|i| i as f64 + 1.0).collect();
        assert!(encode_update(&dense, UpdatePrecision::F64)
            .indices
            .is_empty());
    }

    #[test]
    fn bad_sparse_tensors_are_named() {
        let mut v = vec![0.0; 100];
        v[10] = 3.0;
        v[20] = 4.0;
        let good = encode_update(&v, UpdatePrecision::F64);
        let limits = UpdateLimits::default();
        let decode = |t: &v1::Tensor| decode_update(t, 100, 1 << 20, &limits);
        let with_indices = |ix: &[u32]| v1::Tensor {
            indices: ix.iter().flat_map(|i| i.to_le_bytes()).collect(),
            ..good.clone()
        };
        let err = decode(&with_indices(&[20, 10])).unwrap_err();
        assert!(err.to_string().contains("does not follow"), "{err}");
        let err = decode(&with_indices(&[10, 100])).unwrap_err();
        assert!(err.to_string().contains("outside a vector of 100"), "{err}");
        let err = decode(&with_indices(&[10])).unwrap_err();
        assert!(matches!(err, TensorError::LengthMismatch { .. }), "{err}");
        let mut partial = good.clone();
        partial.indices.pop();
        assert!(matches!(decode(&partial), Err(TensorError::BadIndices(_))));
        let mut bad = v.clone();
        bad[20] = f64::NAN;
        let err = decode(&encode_update(&bad, UpdatePrecision::F64)).unwrap_err();
        assert!(err.to_string().contains("index 20"), "{err}");
        // The norm of the values is the vector's: 5 > 4.9 is refused.
        let bounded = UpdateLimits {
            max_l2_norm: Some(4.9),
        };
        assert!(decode_update(&good, 100, 1 << 20, &bounded).is_err());
        assert_eq!(decode(&good).unwrap().to_f64(), v);
        // A few bytes may not claim a vector larger than a dense one could carry.
        let huge = v1::Tensor {
            len: 1 << 40,
            ..good.clone()
        };
        let err = decode_update(&huge, 1 << 40, 1 << 20, &limits).unwrap_err();
        assert!(matches!(err, TensorError::TooLarge { .. }), "{err}");
        assert!(decode_update(&good, 100, 799, &limits).is_err());
    }
}
