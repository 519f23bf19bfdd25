//! One store's update as the coordinator holds it.

use crate::kernels::sum_of_squares;
use crate::par::map_pieces;

/// One store's update as it arrived: f32 for bandwidth (FedAvg deltas) or f64 where
/// precision matters (second-order statistics).
#[derive(Debug, Clone, PartialEq)]
pub enum UpdateVector {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

impl UpdateVector {
    pub fn len(&self) -> usize {
        match self {
            UpdateVector::F32(v) => v.len(),
            UpdateVector::F64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of payload this update carries.
    pub fn payload_bytes(&self) -> usize {
        match self {
            UpdateVector::F32(v) => v.len() * 4,
            UpdateVector::F64(v) => v.len() * 8,
        }
    }

    /// L2 norm, accumulated in f64; NaN or infinite if any value is.
    pub fn l2_norm(&self) -> f64 {
        let pieces = match self {
            UpdateVector::F32(v) => map_pieces(v, sum_of_squares),
            UpdateVector::F64(v) => map_pieces(v, sum_of_squares),
        };
        pieces.iter().sum::<f64>().sqrt()
    }

    pub fn to_f64(&self) -> Vec<f64> {
        match self {
            UpdateVector::F32(v) => v.iter().map(|&x| x as f64).collect(),
            UpdateVector::F64(v) => v.clone(),
        }
    }
}
