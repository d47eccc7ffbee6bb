//! `build`: packs a service's context from the guest and builds its image through the
//! engine's build endpoint. The image carries the context's digest
//! (`phoenix.build-digest`), so a changed context or Dockerfile rebuilds it, and the same
//! digest is in the container's config hash, so the container is recreated.

use super::plan::{Desired, Plan, Step};
use super::{LABEL_BUILD_DIGEST, LABEL_STACK, StackConverger, StackError, context};
use crate::hostfs as fsutil;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

impl StackConverger {
    /// Packs a service's build context from the guest (beneath the agent's file roots).
    pub(super) fn pack_context(
        &self,
        stack: &str,
        service: &str,
        b: &phoenix_proto::model::compose::Build,
    ) -> Result<context::Packed, StackError> {
        let dir = Path::new(&b.context);
        let fail = |why: String| StackError::BuildContext {
            stack: stack.to_string(),
            service: service.to_string(),
            source: context::ContextError::Read {
                path: b.context.clone(),
                why,
            },
        };
        let root = fsutil::root_of(&self.file_roots, dir)
            .or_else(|| {
                self.file_roots
                    .iter()
                    .map(PathBuf::as_path)
                    .find(|r| dir == *r)
            })
            .ok_or_else(|| fail("is outside the allowed file roots".into()))?;
        context::pack(
            root,
            dir,
            &dockerfile_path(b),
            b.dockerfile_inline.as_deref(),
        )
        .map_err(|source| StackError::BuildContext {
            stack: stack.to_string(),
            service: service.to_string(),
            source,
        })
    }

    /// Builds every image the plan asks for, from the contexts as they are on disk now.
    pub(super) async fn build_images(
        &self,
        desired: &Desired,
        plan: &Plan,
        done: &mut Vec<String>,
    ) -> Result<bool, StackError> {
        let stack = desired.stack.as_str();
        let mut built = false;
        let lines = plan.describe(desired);
        for (step, line) in plan.steps.iter().zip(lines) {
            let Step::Build { index } = step else {
                continue;
            };
            let c = &desired.containers[*index];
            let Some(b) = &c.spec.build else { continue };
            let packed = self.pack_context(stack, &c.service, b)?;
            for f in &packed.secret_looking {
                tracing::warn!(stack, service = %c.service, file = %f, "build context file looks secret and is sent to the build; list it in .dockerignore");
            }
            let dockerfile = dockerfile_path(b);
            let labels = HashMap::from([
                (LABEL_STACK.to_string(), stack.to_string()),
                (LABEL_BUILD_DIGEST.to_string(), packed.digest.clone()),
            ]);
            self.engine
                .build_image(c.spec.image.as_str(), b, &dockerfile, packed.tar, labels)
                .await
                .map_err(Self::engine_err(stack))?;
            done.push(line);
            built = true;
        }
        Ok(built)
    }
}

/// The Dockerfile's path inside the context tar.
fn dockerfile_path(b: &phoenix_proto::model::compose::Build) -> String {
    if b.dockerfile_inline.is_some() {
        context::INLINE_DOCKERFILE.to_string()
    } else {
        b.dockerfile.clone().unwrap_or_else(|| "Dockerfile".into())
    }
}
