//! One answer to "the coordinator said no: try again, or tell the operator what to do?"
//! for every call the agent makes (session, renewal, enrollment). Transient codes are
//! retried with backoff; codes that no retry can fix are fatal and carry the exact
//! commands that fix them.

use phoenix_proto::model::GuestId;
use tonic::Code;

/// Which call failed; the advice differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    Session,
    Renew,
    Enroll,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Transient: retry with backoff.
    Retry,
    /// No retry helps; `advice` says what the operator runs.
    Fatal { advice: String },
}

/// The commands that give a guest a new identity.
pub fn rejoin_advice(guest: Option<GuestId>) -> String {
    let guest = guest.map_or_else(|| "<id>".to_string(), |g| g.to_string());
    format!(
        "on the host run `phoenix token create --guest {guest}`, then here `phoenix-agent join <token>`"
    )
}

/// Sorts a status. `guest` is `None` before enrollment knows it.
pub fn classify(call: Call, code: Code, guest: Option<GuestId>) -> Verdict {
    let fatal = |advice: String| Verdict::Fatal { advice };
    match code {
        // The coordinator does not accept this identity (revoked, replaced, unknown) or
        // this token (spent, expired, for another guest): only a new enrollment helps.
        Code::Unauthenticated | Code::PermissionDenied => fatal(match call {
            Call::Enroll => format!(
                "the join token was refused; create a new one: {}",
                rejoin_advice(guest)
            ),
            Call::Session | Call::Renew => format!(
                "the coordinator refuses this guest's identity (revoked or replaced); the agent keeps enforcing its last desired state meanwhile and picks up the new identity by itself: {}",
                rejoin_advice(guest)
            ),
        }),
        Code::NotFound | Code::AlreadyExists | Code::FailedPrecondition if call == Call::Enroll => {
            fatal(format!(
                "the coordinator cannot enroll with this token; {}",
                rejoin_advice(guest)
            ))
        }
        // Agent and coordinator disagree about the protocol: an upgrade fixes it, a retry
        // does not.
        Code::Unimplemented | Code::InvalidArgument => fatal(
            "agent and coordinator disagree about the protocol; install matching versions of phoenix-agent and phoenix (`phoenix-agent --version`, `phoenix --version`)"
                .to_string(),
        ),
        // Unavailable, DeadlineExceeded, ResourceExhausted, Aborted, Internal, Unknown,
        // Cancelled, DataLoss, OutOfRange, and FailedPrecondition outside enrollment (a
        // CA that is briefly not ready): the coordinator may answer differently later.
        _ => Verdict::Retry,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guest() -> Option<GuestId> {
        GuestId::try_from(1002u32).ok()
    }

    #[test]
    fn transient_codes_are_retried_for_every_call() {
        for call in [Call::Session, Call::Renew, Call::Enroll] {
            for code in [
                Code::Unavailable,
                Code::DeadlineExceeded,
                Code::ResourceExhausted,
                Code::Aborted,
                Code::Internal,
                Code::Unknown,
            ] {
                assert_eq!(
                    classify(call, code, guest()),
                    Verdict::Retry,
                    "{call:?} {code:?}"
                );
            }
        }
        // A CA not ready yet is worth another renewal attempt.
        assert_eq!(
            classify(Call::Renew, Code::FailedPrecondition, guest()),
            Verdict::Retry
        );
    }

    #[test]
    fn refused_identity_tells_the_exact_commands() {
        for call in [Call::Session, Call::Renew] {
            let Verdict::Fatal { advice } = classify(call, Code::PermissionDenied, guest()) else {
                panic!("{call:?}: permission denied must be fatal");
            };
            assert!(
                advice.contains("`phoenix token create --guest 1002`")
                    && advice.contains("`phoenix-agent join <token>`"),
                "{advice}"
            );
        }
        let Verdict::Fatal { advice } = classify(Call::Enroll, Code::NotFound, None) else {
            panic!("an unknown token must be fatal");
        };
        assert!(
            advice.contains("`phoenix token create --guest <id>`"),
            "{advice}"
        );
        assert!(matches!(
            classify(Call::Session, Code::Unimplemented, guest()),
            Verdict::Fatal { advice } if advice.contains("matching versions")
        ));
    }
}
