//! One scrape of `/metrics`, parsed from the Prometheus text format.
//!
//! NOTE: prometheus-parse 0.2 splits labels at `,` and `=` without reading
//! quotes, so a label value that contains either is misread. switchyard's
//! label values are consumer names, event types and fixed words without them.

use std::fmt::Write as _;

use prometheus_parse::{Sample, Scrape, Value};

/// The samples of one `/metrics` response.
#[derive(Debug)]
pub struct Metrics {
    samples: Vec<Sample>,
}

impl Metrics {
    /// Parses a Prometheus text exposition.
    pub fn parse(text: &str) -> anyhow::Result<Metrics> {
        let lines = text.lines().map(|line| Ok(line.to_owned()));
        let scrape = Scrape::parse(lines)?;
        Ok(Metrics {
            samples: scrape.samples,
        })
    }

    /// Returns the sum of every counter, gauge or untyped series of `name`
    /// whose labels include all of `labels`; 0 when none matches, which is
    /// how Prometheus reads a counter that was never incremented.
    ///
    /// A histogram's sum and count are the series `<name>_sum` and
    /// `<name>_count`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels)
            .filter_map(|sample| match sample.value {
                Value::Counter(value) | Value::Gauge(value) | Value::Untyped(value) => Some(value),
                Value::Histogram(_) | Value::Summary(_) => None,
            })
            .sum()
    }

    /// Returns how many series of `name` have labels that include all of
    /// `labels`.
    pub fn series_count(&self, name: &str, labels: &[(&str, &str)]) -> usize {
        self.matching(name, labels).count()
    }

    /// Returns `value` as a whole number of events.
    pub fn count(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let value = self.value(name, labels);
        assert!(
            value >= 0.0 && value.fract() == 0.0,
            "`{name}` {labels:?} is {value}, not a count"
        );
        value as u64
    }

    /// Returns the series of `name` as text lines, for failure messages.
    pub fn describe(&self, name: &str) -> String {
        let mut text = String::new();
        for sample in self.matching(name, &[]) {
            let mut labels: Vec<String> = sample
                .labels
                .iter()
                .map(|(key, value)| format!("{key}=\"{value}\""))
                .collect();
            labels.sort();
            let _ = writeln!(
                text,
                "{}{{{}}} {:?}",
                sample.metric,
                labels.join(","),
                sample.value
            );
        }
        if text.is_empty() {
            text = format!("(no series named `{name}`)\n");
        }
        text
    }

    fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |sample| {
            sample.metric == name
                && labels
                    .iter()
                    .all(|(key, value)| sample.labels.get(key) == Some(*value))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# TYPE switchyard_events_handled_total counter
switchyard_events_handled_total{consumer=\"email-service\",outcome=\"ok\"} 2
switchyard_events_handled_total{consumer=\"email-service\",outcome=\"retry\"} 1
switchyard_events_handled_total{consumer=\"analytics-service\",outcome=\"ok\"} 1
# TYPE switchyard_handler_duration_seconds histogram
switchyard_handler_duration_seconds_bucket{consumer=\"email-service\",le=\"0.5\"} 3
switchyard_handler_duration_seconds_bucket{consumer=\"email-service\",le=\"+Inf\"} 3
switchyard_handler_duration_seconds_sum{consumer=\"email-service\"} 0.25
switchyard_handler_duration_seconds_count{consumer=\"email-service\"} 3
";

    #[test]
    fn counters_sum_over_matching_labels() {
        let metrics = Metrics::parse(TEXT).unwrap();
        let handled = "switchyard_events_handled_total";
        assert_eq!(metrics.count(handled, &[("consumer", "email-service")]), 3);
        assert_eq!(metrics.count(handled, &[("outcome", "ok")]), 3);
        assert_eq!(metrics.count(handled, &[]), 4);
        assert_eq!(metrics.count(handled, &[("consumer", "absent")]), 0);
    }

    #[test]
    fn histogram_sum_and_count_readable() {
        let metrics = Metrics::parse(TEXT).unwrap();
        let labels = [("consumer", "email-service")];
        assert_eq!(
            metrics.value("switchyard_handler_duration_seconds_sum", &labels),
            0.25
        );
        assert_eq!(
            metrics.count("switchyard_handler_duration_seconds_count", &labels),
            3
        );
    }
}
