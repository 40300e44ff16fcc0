//! Bounded label values: every set of values a self-metric label can take is one enum declared with
//! [`label_enum!`], so a label value is written once, a typo is a compile error, and `/metrics` shows
//! every value from the start (zeros included, so `increase()` sees the first occurrence). [`Counts`]
//! counts by such a label.

use std::fmt;

/// An enum whose variants are the values of one metric label.
pub trait Label: Copy + Eq + 'static {
    /// Every value, in exposition order.
    const ALL: &'static [Self];
    /// The label value.
    fn as_str(self) -> &'static str;
    /// Position in [`Label::ALL`].
    fn index(self) -> usize;
}

/// Declare a label enum: `label_enum! { pub enum Outcome { Sent => "sent", Dropped => "dropped" } }`.
#[macro_export]
macro_rules! label_enum {
    ($(#[$m:meta])* $vis:vis enum $name:ident { $($(#[$vm:meta])* $var:ident => $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        $vis enum $name { $($(#[$vm])* $var),+ }
        impl $crate::labels::Label for $name {
            const ALL: &'static [Self] = &[$(Self::$var),+];
            fn as_str(self) -> &'static str {
                match self { $(Self::$var => $s),+ }
            }
            fn index(self) -> usize {
                self as usize
            }
        }
        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str($crate::labels::Label::as_str(*self))
            }
        }
    };
}

/// A counter per value of label `L`.
#[derive(Clone, PartialEq, Eq)]
pub struct Counts<L: Label> {
    n: Vec<u64>,
    _label: std::marker::PhantomData<L>,
}

impl<L: Label> Default for Counts<L> {
    fn default() -> Self {
        Self { n: vec![0; L::ALL.len()], _label: std::marker::PhantomData }
    }
}

impl<L: Label> Counts<L> {
    pub fn add(&mut self, label: L, by: u64) {
        if let Some(c) = self.n.get_mut(label.index()) {
            *c += by;
        }
    }

    pub fn inc(&mut self, label: L) {
        self.add(label, 1);
    }

    pub fn get(&self, label: L) -> u64 {
        self.n.get(label.index()).copied().unwrap_or(0)
    }

    pub fn total(&self) -> u64 {
        self.n.iter().sum()
    }

    /// Every label value with its count, zeros included, in [`Label::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (L, u64)> + '_ {
        L::ALL.iter().map(|l| (*l, self.get(*l)))
    }
}

impl<L: Label + fmt::Debug> fmt::Debug for Counts<L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter().filter(|(_, n)| *n > 0).map(|(l, n)| (l.as_str(), n))).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::label_enum! {
        enum Outcome { Sent => "sent", Dropped => "dropped_backlog_full", Rejected => "rejected" }
    }

    #[test]
    fn counts_every_value_in_declared_order() {
        let mut c = Counts::<Outcome>::default();
        c.inc(Outcome::Rejected);
        c.add(Outcome::Sent, 5);
        let all: Vec<(&str, u64)> = c.iter().map(|(l, n)| (l.as_str(), n)).collect();
        assert_eq!(all, [("sent", 5), ("dropped_backlog_full", 0), ("rejected", 1)]);
        assert_eq!(c.total(), 6);
        assert_eq!(Outcome::Dropped.to_string(), "dropped_backlog_full");
        assert_eq!(Outcome::ALL.iter().map(|o| o.index()).collect::<Vec<_>>(), [0, 1, 2]);
    }
}
