//! Shared by the compile tests: the compiled state as the agent receives it.

use phoenix_proto::convert::ConvertError;
use phoenix_proto::model::{self, DesiredState};
use phoenix_proto::v1;

/// `spec_json` (a compiled guest's spec, or a golden file's) passed through the same
/// conversion the agent runs on a pushed desired state: digest, JSON, names, every
/// resource, duplicates, dependencies, cycles and what the agent can carry out.
pub fn as_the_agent_receives(spec_json: Vec<u8>) -> Result<DesiredState, ConvertError> {
    DesiredState::try_from(v1::DesiredState {
        revision: 1,
        digest: model::digest(&spec_json),
        spec_json,
        dry_run: false,
    })
}
