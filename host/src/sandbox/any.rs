//! Plugins of either world: which world a component implements (told from its exports), and
//! loading whichever it is.

use super::allocator::AllocatorPlugin;
use super::cache::ArtifactCache;
use super::engine::engine;
use super::metric::Plugin;
use super::policy::Policy;
use super::verdict::Failure;
use super::world::component_of;
use serde::{Deserialize, Serialize};
use wasmtime::component::Component;

/// Which world of `autoprune:metric` a component implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum World {
    /// A pruning metric (`score`).
    Metric,
    /// A layer-wise sparsity allocator (`allocate`).
    Allocator,
}

impl World {
    /// Tell the world from the names of a component's exports: `allocate` makes an allocator,
    /// `score` a metric; both or neither is refused.
    pub fn from_exports<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<World, Failure> {
        let (mut score, mut allocate) = (false, false);
        for n in names {
            score |= n == "score";
            allocate |= n == "allocate";
        }
        match (score, allocate) {
            (true, false) => Ok(World::Metric),
            (false, true) => Ok(World::Allocator),
            (true, true) => Err(Failure::Rejected {
                reason: "the component exports both `score` and `allocate`; a plugin implements one world".into(),
            }),
            (false, false) => Err(Failure::Rejected {
                reason: "the component exports neither `score` (metric world) nor `allocate` (allocator world)".into(),
            }),
        }
    }

    /// The world of a compiled component.
    pub fn of(component: &Component) -> Result<World, Failure> {
        let ty = component.component_type();
        let names: Vec<&str> = ty.exports(engine()).map(|(n, _)| n).collect();
        World::from_exports(names)
    }
}

/// A plugin of either world, as loaded from component bytes.
#[derive(Debug)]
pub enum AnyPlugin {
    /// A pruning metric.
    Metric(Plugin),
    /// A layer-wise sparsity allocator.
    Allocator(AllocatorPlugin),
}

impl AnyPlugin {
    /// Compile `bytes`, tell the world from the exports and load the plugin of that world.
    pub fn load(
        bytes: &[u8],
        policy: &Policy,
        cache: Option<&ArtifactCache>,
    ) -> Result<AnyPlugin, Failure> {
        let component = component_of(bytes, policy, cache)?;
        match World::of(&component)? {
            World::Allocator => {
                AllocatorPlugin::from_component(&component, policy).map(AnyPlugin::Allocator)
            }
            World::Metric => Plugin::from_component(&component, policy).map(AnyPlugin::Metric),
        }
    }

    /// The world of the plugin.
    pub fn world(&self) -> World {
        match self {
            AnyPlugin::Metric(_) => World::Metric,
            AnyPlugin::Allocator(_) => World::Allocator,
        }
    }
}
