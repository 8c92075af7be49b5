//! Aggregation over seeds: one summary per cell.

use super::ResultRow;

/// Mean and sample standard deviation (n − 1); the deviation is `None` for fewer than two
/// values, where it is undefined.
pub fn mean_std(values: &[f64]) -> (f64, Option<f64>) {
    let n = values.len();
    if n == 0 {
        return (f64::NAN, None);
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    if n < 2 {
        return (mean, None);
    }
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    (mean, Some(var.sqrt()))
}

/// A cell's runs summarised over seeds.
#[derive(Debug, Clone, PartialEq)]
pub struct CellSummary {
    pub recipe: String,
    pub cell: String,
    /// How tables and plots name the cell: its name, prefixed by the recipe when the report
    /// covers several recipes.
    pub label: String,
    pub params: Vec<(String, String)>,
    pub dataset: String,
    pub model: String,
    pub method: String,
    pub method_label: String,
    pub seeds: Vec<u64>,
    pub test_err: (f64, Option<f64>),
    pub test_acc: (f64, Option<f64>),
    /// Test error at the evaluation chosen on validation; `None` without a validation split.
    pub test_err_at_best: Option<(f64, Option<f64>)>,
    pub energy_s1: (f64, Option<f64>),
    /// Largest orthogonality error over the cell's runs.
    pub orth_error: Option<f64>,
    pub images_per_sec: f64,
    pub train_seconds: f64,
}

impl CellSummary {
    /// Whether `row` is one of this cell's runs.
    pub fn contains(&self, row: &ResultRow) -> bool {
        row.recipe == self.recipe && row.cell == self.cell
    }
}

/// Groups `rows` by cell, in order of first appearance, and summarises each over its seeds.
pub fn summarize(rows: &[ResultRow]) -> Vec<CellSummary> {
    let mut order: Vec<(String, String)> = Vec::new();
    for r in rows {
        if !order.contains(&r.cell_id()) {
            order.push(r.cell_id());
        }
    }
    let several_recipes = order.iter().any(|(recipe, _)| *recipe != order[0].0);
    order
        .into_iter()
        .map(|id| {
            let group: Vec<&ResultRow> = rows.iter().filter(|r| r.cell_id() == id).collect();
            let first = group[0];
            let col = |f: fn(&ResultRow) -> f64| group.iter().map(|r| f(r)).collect::<Vec<_>>();
            CellSummary {
                recipe: id.0.clone(),
                cell: id.1.clone(),
                label: if several_recipes {
                    format!("{}/{}", id.0, id.1)
                } else {
                    id.1.clone()
                },
                params: first.params.clone(),
                dataset: first.dataset.clone(),
                model: first.model.clone(),
                method: first.method.clone(),
                method_label: first.method_label.clone(),
                seeds: group.iter().map(|r| r.seed).collect(),
                test_err: mean_std(&col(|r| r.test_err)),
                test_acc: mean_std(&col(|r| r.test_acc)),
                test_err_at_best: {
                    let at_best: Vec<f64> =
                        group.iter().filter_map(|r| r.test_err_at_best).collect();
                    (!at_best.is_empty()).then(|| mean_std(&at_best))
                },
                energy_s1: mean_std(&col(|r| r.energy_s1)),
                orth_error: group
                    .iter()
                    .filter_map(|r| r.orth_error)
                    .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v)))),
                images_per_sec: mean_std(&col(|r| r.images_per_sec)).0,
                train_seconds: mean_std(&col(|r| r.train_seconds)).0,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_sample_std_match_hand_computed_values() {
        // mean 3, squared deviations 4 + 0 + 4 = 8, / (3 − 1) = 4, sqrt 2.
        assert_eq!(mean_std(&[1.0, 3.0, 5.0]), (3.0, Some(2.0)));
        assert_eq!(mean_std(&[2.5]), (2.5, None));
        let (m, s) = mean_std(&[10.0, 12.0]);
        assert_eq!(m, 11.0);
        assert!((s.unwrap() - std::f64::consts::SQRT_2).abs() < 1e-12);
        assert!(mean_std(&[]).0.is_nan());
    }
}
