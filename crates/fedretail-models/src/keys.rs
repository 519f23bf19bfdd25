//! Which (category, day) each forecast row is for, as a store's result tables name it.
//! Each distinct text is kept once and a row holds two indices into it: a network of
//! a thousand stores holds about a million such rows, and a pair of `String`s each
//! cost more than the row's features.

use std::collections::HashMap;

/// (category, ISO date) of each row, in row order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RowKeys {
    texts: Vec<String>,
    rows: Vec<(u32, u32)>,
}

impl RowKeys {
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// (category, date) of each row.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.rows.iter().map(|&(c, d)| {
            (
                self.texts[c as usize].as_str(),
                self.texts[d as usize].as_str(),
            )
        })
    }
}

/// Builds [`RowKeys`], looking each text up as it comes.
#[derive(Debug, Default)]
pub struct RowKeysBuilder {
    keys: RowKeys,
    index: HashMap<String, u32>,
}

impl RowKeysBuilder {
    pub fn push(&mut self, category: &str, date: &str) {
        let (c, d) = (self.intern(category), self.intern(date));
        self.keys.rows.push((c, d));
    }

    fn intern(&mut self, text: &str) -> u32 {
        if let Some(&i) = self.index.get(text) {
            return i;
        }
        let i = self.keys.texts.len() as u32;
        self.keys.texts.push(text.to_string());
        self.index.insert(text.to_string(), i);
        i
    }

    pub fn finish(mut self) -> RowKeys {
        self.keys.rows.shrink_to_fit();
        self.keys.texts.shrink_to_fit();
        self.keys
    }
}

impl FromIterator<(String, String)> for RowKeys {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(iter: I) -> Self {
        let mut b = RowKeysBuilder::default();
        iter.into_iter().for_each(|(c, d)| b.push(&c, &d));
        b.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_come_back_in_order_with_each_text_kept_once() {
        let keys: RowKeys = [
            ("bread", "2026-01-01"),
            ("milk", "2026-01-01"),
            ("bread", "2026-01-02"),
        ]
        .into_iter()
        .map(|(c, d)| (c.to_string(), d.to_string()))
        .collect();
        let back: Vec<(&str, &str)> = keys.iter().collect();
        assert_eq!(
            back,
            [
                ("bread", "2026-01-01"),
                ("milk", "2026-01-01"),
                ("bread", "2026-01-02")
            ]
        );
        assert_eq!(keys.texts.len(), 4);
        assert_eq!(keys.len(), 3);
    }
}
