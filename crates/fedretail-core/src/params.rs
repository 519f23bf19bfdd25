use crate::error::ConfigError;
use serde::{Deserialize, Serialize};

/// A named slice of the flat parameter vector (e.g. `intercept`, `history`). Named
/// segments let later strategies treat parts differently: a shared body with a
/// personal head, or per-segment clipping and compression.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    pub name: String,
    pub len: usize,
    /// Whether L2 regularisation applies to this segment (intercepts usually not).
    pub regularized: bool,
}

impl Segment {
    pub fn new(name: impl Into<String>, len: usize, regularized: bool) -> Self {
        Segment {
            name: name.into(),
            len,
            regularized,
        }
    }
}

/// The shape of a model: its segments in order. Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelLayout {
    segments: Vec<Segment>,
    len: usize,
}

impl ModelLayout {
    pub fn new(segments: Vec<Segment>) -> Result<Self, ConfigError> {
        if segments.is_empty() {
            return Err(ConfigError::Layout(
                "a model needs at least one segment".into(),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for s in &segments {
            if s.len == 0 {
                return Err(ConfigError::Layout(format!(
                    "segment '{}' is empty",
                    s.name
                )));
            }
            if !seen.insert(s.name.as_str()) {
                return Err(ConfigError::Layout(format!(
                    "segment '{}' appears twice",
                    s.name
                )));
            }
        }
        // Checked: a peer's layout with absurd lengths is an error, not an overflow.
        let len = segments
            .iter()
            .try_fold(0usize, |acc, s| acc.checked_add(s.len))
            .ok_or_else(|| ConfigError::Layout("segment lengths overflow".into()))?;
        Ok(ModelLayout { segments, len })
    }

    /// Total number of parameters.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// The index range of the named segment.
    pub fn range(&self, name: &str) -> Option<std::ops::Range<usize>> {
        let mut start = 0;
        for s in self.segments.iter() {
            if s.name == name {
                return Some(start..start + s.len);
            }
            start += s.len;
        }
        None
    }

    /// One flag per parameter: does L2 regularisation apply to it.
    pub fn regularization_mask(&self) -> Vec<bool> {
        self.segments
            .iter()
            .flat_map(|s| std::iter::repeat_n(s.regularized, s.len))
            .collect()
    }
}

/// A model's parameters: a flat f64 vector shaped by a [`ModelLayout`].
#[derive(Debug, Clone, PartialEq)]
pub struct ModelParameters {
    layout: ModelLayout,
    values: Vec<f64>,
}

impl ModelParameters {
    pub fn zeros(layout: ModelLayout) -> Self {
        let values = vec![0.0; layout.len()];
        ModelParameters { layout, values }
    }

    pub fn from_values(layout: ModelLayout, values: Vec<f64>) -> Result<Self, ConfigError> {
        if values.len() != layout.len() {
            return Err(ConfigError::Layout(format!(
                "{} values for a layout of {} parameters",
                values.len(),
                layout.len()
            )));
        }
        Ok(ModelParameters { layout, values })
    }

    pub fn layout(&self) -> &ModelLayout {
        &self.layout
    }

    pub fn values(&self) -> &[f64] {
        &self.values
    }

    pub fn into_values(self) -> Vec<f64> {
        self.values
    }

    pub fn segment(&self, name: &str) -> Option<&[f64]> {
        self.layout.range(name).map(|r| &self.values[r])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_addressed_by_name() {
        let layout = ModelLayout::new(vec![
            Segment::new("intercept", 1, false),
            Segment::new("body", 3, true),
        ])
        .unwrap();
        let p = ModelParameters::from_values(layout.clone(), vec![1.0, 2.0, 3.0, 4.0]).unwrap();
        assert_eq!(p.segment("body"), Some(&[2.0, 3.0, 4.0][..]));
        assert_eq!(layout.regularization_mask(), vec![false, true, true, true]);
        assert!(p.segment("head").is_none());
    }

    #[test]
    fn bad_layouts_are_refused() {
        assert!(ModelLayout::new(vec![]).is_err());
        assert!(ModelLayout::new(vec![Segment::new("a", 0, true)]).is_err());
        let dup = ModelLayout::new(vec![Segment::new("a", 1, true), Segment::new("a", 1, true)]);
        assert!(dup.unwrap_err().to_string().contains("twice"));
    }
}
