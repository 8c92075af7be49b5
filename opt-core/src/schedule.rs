//! Piecewise-constant learning-rate schedule (TF `piecewise_constant` as used by the official code).

/// `lr(i) = base · factor^k` where `k` = number of milestones `≤ i`: the decay applies *before*
/// the step of the milestone iteration (spec §5).
#[derive(Debug, Clone, PartialEq)]
pub struct PiecewiseLr {
    pub base: f64,
    pub milestones: Vec<u64>,
    pub factor: f64,
}

impl PiecewiseLr {
    pub fn at(&self, iteration: u64) -> f64 {
        let k = self.milestones.iter().filter(|&&m| m <= iteration).count();
        self.base * self.factor.powi(k as i32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decays_at_milestones() {
        let s = PiecewiseLr {
            base: 0.1,
            milestones: vec![30_000, 50_000, 65_000],
            factor: 0.1,
        };
        assert_eq!(s.at(0), 0.1);
        assert_eq!(s.at(29_999), 0.1);
        assert!((s.at(30_000) - 0.01).abs() < 1e-15);
        assert!((s.at(64_999) - 0.001).abs() < 1e-15);
        assert!((s.at(74_999) - 0.0001).abs() < 1e-15);
    }
}
