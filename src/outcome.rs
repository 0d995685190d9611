//! How an exchange ended, read from Envoy's `response.code_details` and what the filter saw.

/// The `outcome` field of a capture record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The whole response reached the filter's end of the chain.
    Complete,
    /// The downstream went away before the response ended.
    ClientAborted,
    /// Connection failure, reset or timeout upstream, including Envoy's own error reply for it.
    UpstreamFailed,
}

impl Outcome {
    /// The record's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Complete => "complete",
            Outcome::ClientAborted => "client_aborted",
            Outcome::UpstreamFailed => "upstream_failed",
        }
    }
}

/// Details Envoy's router and connection manager give when the upstream side failed.
const UPSTREAM_FAILURES: [&str; 7] = [
    "response_timeout",
    "stream_idle_timeout",
    "no_healthy_upstream",
    "cluster_not_found",
    "maintenance_mode",
    "upstream_overflow",
    "no_route_cluster",
];

/// Classifies an exchange. `details` is `response.code_details` (empty when Envoy had none);
/// `response_ended` is whether the filter saw the response's end of stream.
pub fn classify(details: &str, response_ended: bool) -> Outcome {
    if details.starts_with("upstream_") || UPSTREAM_FAILURES.contains(&details) {
        Outcome::UpstreamFailed
    } else if details.starts_with("downstream_") {
        Outcome::ClientAborted
    } else if response_ended {
        Outcome::Complete
    } else {
        // The stream ended before its response did and nothing upstream failed: the client left.
        Outcome::ClientAborted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_that_ended_via_upstream_is_complete() {
        assert_eq!(classify("via_upstream", true), Outcome::Complete);
    }

    #[test]
    fn local_replies_that_are_not_upstream_failures_are_complete() {
        assert_eq!(classify("route_not_found", true), Outcome::Complete);
        assert_eq!(classify("direct_response", true), Outcome::Complete);
    }

    #[test]
    fn upstream_resets_and_timeouts_are_upstream_failures_even_with_a_reply() {
        for d in [
            "upstream_reset_before_response_started{connection_failure,delayed_connect_error:_111}",
            "upstream_reset_after_response_started{remote_reset}",
            "upstream_per_try_timeout",
            "response_timeout",
            "no_healthy_upstream",
        ] {
            assert_eq!(classify(d, true), Outcome::UpstreamFailed, "{d}");
            assert_eq!(classify(d, false), Outcome::UpstreamFailed, "{d}");
        }
    }

    #[test]
    fn downstream_disconnects_are_client_aborts() {
        assert_eq!(
            classify("downstream_remote_disconnect", false),
            Outcome::ClientAborted
        );
        assert_eq!(
            classify(
                "downstream_local_disconnect(filter_chain_is_being_removed)",
                true
            ),
            Outcome::ClientAborted
        );
    }

    #[test]
    fn a_response_cut_short_without_an_upstream_failure_is_a_client_abort() {
        assert_eq!(classify("via_upstream", false), Outcome::ClientAborted);
        assert_eq!(classify("", false), Outcome::ClientAborted);
    }
}
