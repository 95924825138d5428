//! Prometheus metrics in the text format, kept by hand: a request counter by
//! route, method and status, a latency histogram by route, and the store pool.
//! Routes are their patterns (`/api/v1/users/{id}`), so the label set stays bounded.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

use crate::store::Store;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

#[derive(Debug, Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

#[derive(Debug, Default)]
struct Inner {
    requests: BTreeMap<(String, String, u16), u64>,
    latency: BTreeMap<String, Histogram>,
}

/// The process's HTTP metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

impl Metrics {
    /// Counts one finished request.
    pub fn observe(&self, route: &str, method: &str, status: u16, elapsed: Duration) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        *inner
            .requests
            .entry((route.to_string(), method.to_string(), status))
            .or_default() += 1;
        let h = inner.latency.entry(route.to_string()).or_default();
        let secs = elapsed.as_secs_f64();
        for (i, bound) in BUCKETS.iter().enumerate() {
            if secs <= *bound {
                h.counts[i] += 1;
            }
        }
        h.sum += secs;
        h.count += 1;
    }

    /// The Prometheus text exposition of everything.
    pub fn render(&self, store: &Store) -> String {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::with_capacity(4096);
        out.push_str(
            "# HELP drover_http_requests_total HTTP requests by route, method and status.\n",
        );
        out.push_str("# TYPE drover_http_requests_total counter\n");
        for ((route, method, status), n) in &inner.requests {
            let _ = writeln!(
                out,
                "drover_http_requests_total{{route=\"{}\",method=\"{}\",status=\"{status}\"}} {n}",
                escape(route),
                escape(method)
            );
        }
        out.push_str(
            "# HELP drover_http_request_duration_seconds HTTP request latency by route.\n",
        );
        out.push_str("# TYPE drover_http_request_duration_seconds histogram\n");
        for (route, h) in &inner.latency {
            let route = escape(route);
            for (i, bound) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "drover_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"{bound}\"}} {}",
                    h.counts[i]
                );
            }
            let _ = writeln!(
                out,
                "drover_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "drover_http_request_duration_seconds_sum{{route=\"{route}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "drover_http_request_duration_seconds_count{{route=\"{route}\"}} {}",
                h.count
            );
        }
        drop(inner);
        let pool = store.pool_stats();
        let backend = store.backend();
        out.push_str("# HELP drover_store_connections Open store connections by state.\n");
        out.push_str("# TYPE drover_store_connections gauge\n");
        let _ = writeln!(
            out,
            "drover_store_connections{{backend=\"{backend}\",state=\"idle\"}} {}",
            pool.idle
        );
        let _ = writeln!(
            out,
            "drover_store_connections{{backend=\"{backend}\",state=\"in_use\"}} {}",
            pool.size.saturating_sub(pool.idle)
        );
        out.push_str(
            "# HELP drover_store_connections_max Configured maximum of store connections.\n",
        );
        out.push_str("# TYPE drover_store_connections_max gauge\n");
        let _ = writeln!(
            out,
            "drover_store_connections_max{{backend=\"{backend}\"}} {}",
            pool.max
        );
        out
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::default();
        m.observe("/x", "GET", 200, Duration::from_millis(3));
        m.observe("/x", "GET", 500, Duration::from_millis(300));
        let inner = m.inner.lock().expect("lock");
        let h = &inner.latency["/x"];
        assert_eq!(h.count, 2);
        assert_eq!(h.counts[0], 0);
        assert_eq!(h.counts[2], 1);
        assert_eq!(h.counts[BUCKETS.len() - 1], 2);
        assert_eq!(inner.requests.len(), 2);
    }
}
