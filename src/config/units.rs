//! The numbers of the config as types: a [`Weight`], a [`Fraction`], a
//! latency [`Ratio`] and a [`Percent`] can only hold a valid value, and each
//! says in its own words why a value is refused. Validation builds them from
//! what was written; the run-time API (`veer weights`, the admin API) builds
//! weights through the same rule, so the file and the command line refuse
//! the same values with the same message.
//!
//! Durations are `std::time::Duration`, parsed (with their messages) by
//! `duration`; which durations may be zero is a per-field rule, in `validate`.

use std::fmt;

use super::raw::Scalar;

/// A weight above this is surely a mistake, and keeps sums far from overflow.
pub const MAX_WEIGHT: i128 = 1_000_000;

/// A version's share of weighted traffic: a whole number in
/// `0..=MAX_WEIGHT`, relative to the other versions' weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Weight(u32);

impl Weight {
    pub const ZERO: Weight = Weight(0);

    /// `None` above [`MAX_WEIGHT`].
    pub fn new(weight: u32) -> Option<Weight> {
        (i128::from(weight) <= MAX_WEIGHT).then_some(Weight(weight))
    }

    pub const fn get(self) -> u32 {
        self.0
    }

    /// The rule for a weight, with one message for each refusal. `whole` is
    /// the value when it is a whole number (any value beyond the maximum for
    /// one too large to hold); `written` is how it was written.
    pub fn parse(whole: Option<i128>, written: &str) -> Result<Weight, String> {
        match whole {
            Some(w) if w < 0 => Err(format!(
                "weight {written} is negative: weights are whole numbers from 0 to {MAX_WEIGHT}"
            )),
            Some(w) if w > MAX_WEIGHT => Err(format!(
                "weight {written} is above the maximum {MAX_WEIGHT}: weights are relative, so scale them all down"
            )),
            Some(w) => u32::try_from(w)
                .ok()
                .and_then(Weight::new)
                .ok_or_else(|| format!("weight {w} is out of range")),
            None => Err(format!(
                "`{written}` is not a whole number: weights are whole numbers from 0 to {MAX_WEIGHT}"
            )),
        }
    }

    pub(crate) fn from_scalar(raw: &Scalar) -> Result<Weight, String> {
        let whole = match raw {
            Scalar::Int(n) => Some(*n),
            _ => None,
        };
        Weight::parse(whole, &raw.to_string())
    }
}

impl PartialEq<u32> for Weight {
    fn eq(&self, other: &u32) -> bool {
        self.0 == *other
    }
}

impl From<Weight> for u32 {
    fn from(weight: Weight) -> u32 {
        weight.0
    }
}

impl From<Weight> for u64 {
    fn from(weight: Weight) -> u64 {
        u64::from(weight.0)
    }
}

impl fmt::Display for Weight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// A number written in the config, integers taken as floats; `hint` says
/// what to write instead.
fn number(raw: &Scalar, hint: &str) -> Result<f64, String> {
    match raw {
        // Precision beyond 2^53 does not matter for a threshold.
        #[allow(clippy::cast_precision_loss)]
        Scalar::Int(n) => Ok(*n as f64),
        Scalar::Float(n) if n.is_finite() => Ok(*n),
        other => Err(format!("`{other}` is not a number: {hint}")),
    }
}

/// A share of something, in `0..=1`: an error rate, or how far one may rise.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Default)]
pub struct Fraction(f64);

impl Fraction {
    const HINT: &'static str = "write a fraction, such as 0.05 for 5%";

    /// `None` outside `0..=1` (NaN included).
    pub fn new(value: f64) -> Option<Fraction> {
        (0.0..=1.0).contains(&value).then_some(Fraction(value))
    }

    pub const fn get(self) -> f64 {
        self.0
    }

    pub(crate) fn from_scalar(raw: &Scalar) -> Result<Fraction, String> {
        let value = number(raw, Self::HINT)?;
        Fraction::new(value).ok_or_else(|| format!("`{raw}` is outside 0..=1: {}", Self::HINT))
    }
}

impl fmt::Display for Fraction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// How many times slower a version's p95 may be than the baseline's: a
/// finite number of at least 1.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct Ratio(f64);

impl Ratio {
    /// `None` below 1, or not finite.
    pub fn new(value: f64) -> Option<Ratio> {
        (value.is_finite() && value >= 1.0).then_some(Ratio(value))
    }

    pub const fn get(self) -> f64 {
        self.0
    }

    pub(crate) fn from_scalar(raw: &Scalar) -> Result<Ratio, String> {
        let value = number(raw, "write a ratio such as 1.5")?;
        Ratio::new(value).ok_or_else(|| {
            format!(
                "`{raw}` is below 1: max_latency_ratio is the version's p95 over the baseline's, such as 1.5 for 50% slower"
            )
        })
    }
}

/// A whole percentage, `0..=100`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Percent(u32);

impl Percent {
    /// `None` above 100.
    pub const fn new(value: u32) -> Option<Percent> {
        if value <= 100 {
            Some(Percent(value))
        } else {
            None
        }
    }

    /// For defaults written in code: values above 100 become 100.
    pub(crate) const fn saturating(value: u32) -> Percent {
        Percent(if value <= 100 { value } else { 100 })
    }

    pub const fn get(self) -> u32 {
        self.0
    }

    /// A whole number in `min..=100`; `what` says what it is a percent of.
    pub(crate) fn from_scalar(raw: &Scalar, min: u32, what: &str) -> Result<Percent, String> {
        let Scalar::Int(n) = raw else {
            return Err(format!("`{raw}` is not a whole number"));
        };
        u32::try_from(*n)
            .ok()
            .filter(|n| *n >= min)
            .and_then(Percent::new)
            .ok_or_else(|| format!("{n} is outside {min}..=100 ({what})"))
    }
}

impl From<Percent> for u32 {
    fn from(percent: Percent) -> u32 {
        percent.0
    }
}

impl From<Percent> for u64 {
    fn from(percent: Percent) -> u64 {
        u64::from(percent.0)
    }
}

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_hold_only_valid_values() {
        assert_eq!(Weight::new(0), Some(Weight::ZERO));
        assert_eq!(Weight::new(1_000_001), None);
        assert_eq!(
            Weight::from_scalar(&Scalar::Int(90)).map(Weight::get),
            Ok(90)
        );
        assert_eq!(
            Weight::from_scalar(&Scalar::Int(-1)),
            Err("weight -1 is negative: weights are whole numbers from 0 to 1000000".into())
        );
        assert_eq!(
            Weight::from_scalar(&Scalar::Int(2_000_000)),
            Err("weight 2000000 is above the maximum 1000000: weights are relative, so scale them all down".into())
        );
        assert_eq!(
            Weight::from_scalar(&Scalar::Float(1.5)),
            Err("`1.5` is not a whole number: weights are whole numbers from 0 to 1000000".into())
        );
        assert_eq!(format!("{:>4}", Weight::new(7).expect("valid")), "   7");
        assert!(Weight::new(0).expect("valid") == 0);
    }

    #[test]
    fn fractions_ratios_and_percents_say_why_they_refuse() {
        assert_eq!(Fraction::new(0.05).map(Fraction::get), Some(0.05));
        assert_eq!(Fraction::new(f64::NAN), None);
        assert_eq!(
            Fraction::from_scalar(&Scalar::Float(1.5)),
            Err("`1.5` is outside 0..=1: write a fraction, such as 0.05 for 5%".into())
        );
        assert_eq!(
            Fraction::from_scalar(&Scalar::Text("5%".into())),
            Err("`5%` is not a number: write a fraction, such as 0.05 for 5%".into())
        );
        assert_eq!(Ratio::new(0.9), None);
        assert_eq!(Ratio::new(f64::INFINITY), None);
        assert_eq!(Ratio::from_scalar(&Scalar::Int(2)).map(Ratio::get), Ok(2.0));
        assert_eq!(
            Ratio::from_scalar(&Scalar::Float(0.5)),
            Err("`0.5` is below 1: max_latency_ratio is the version's p95 over the baseline's, such as 1.5 for 50% slower".into())
        );
        assert_eq!(Percent::new(101), None);
        assert_eq!(
            Percent::from_scalar(&Scalar::Int(150), 0, "of endpoints"),
            Err("150 is outside 0..=100 (of endpoints)".into())
        );
        assert_eq!(
            Percent::from_scalar(&Scalar::Text("half".into()), 0, "of endpoints"),
            Err("`half` is not a whole number".into())
        );
        assert_eq!(u64::from(Percent::new(50).expect("valid")), 50);
    }
}
