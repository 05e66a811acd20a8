//! Medians and spreads of repeated runs.

/// Repeated measurements of one figure.
#[derive(Clone, Debug, Default)]
pub struct Samples(pub Vec<f64>);

impl Samples {
    pub fn push(&mut self, v: f64) {
        self.0.push(v);
    }

    fn sorted(&self) -> Vec<f64> {
        let mut v: Vec<f64> = self.0.iter().copied().filter(|x| x.is_finite()).collect();
        v.sort_by(f64::total_cmp);
        v
    }

    pub fn median(&self) -> f64 {
        let v = self.sorted();
        match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    }

    pub fn min(&self) -> f64 {
        self.sorted().first().copied().unwrap_or(f64::NAN)
    }

    pub fn max(&self) -> f64 {
        self.sorted().last().copied().unwrap_or(f64::NAN)
    }

    /// Elementwise `self / other` (runs paired by index: the same round).
    pub fn ratio(&self, other: &Samples) -> Samples {
        Samples(self.0.iter().zip(&other.0).map(|(a, b)| a / b).collect())
    }

    /// Elementwise `self - other`.
    pub fn minus(&self, other: &Samples) -> Samples {
        Samples(self.0.iter().zip(&other.0).map(|(a, b)| a - b).collect())
    }

    /// "median (min–max)" with `prec` decimals.
    pub fn fmt(&self, prec: usize) -> String {
        if self.0.is_empty() {
            return "n/a".into();
        }
        format!(
            "{:.p$} ({:.p$}–{:.p$})",
            self.median(),
            self.min(),
            self.max(),
            p = prec
        )
    }

    /// "median (min–max)" for large counts, in millions with 2 decimals.
    pub fn fmt_m(&self) -> String {
        if self.0.is_empty() {
            return "n/a".into();
        }
        format!(
            "{:.2} ({:.2}–{:.2})",
            self.median() / 1e6,
            self.min() / 1e6,
            self.max() / 1e6
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_ratio() {
        let a = Samples(vec![3.0, 1.0, 2.0]);
        assert_eq!(a.median(), 2.0);
        assert_eq!(Samples(vec![4.0, 1.0, 2.0, 3.0]).median(), 2.5);
        let r = a.ratio(&Samples(vec![1.0, 1.0, 2.0]));
        assert_eq!(r.0, vec![3.0, 1.0, 1.0]);
        assert_eq!(a.fmt(1), "2.0 (1.0–3.0)");
    }
}
