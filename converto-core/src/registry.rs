//! Routes (source, target) pairs to converters, directly or through a chain of them.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use serde::Serialize;

use crate::Format;
use crate::chain::{ChainConverter, Hop};
use crate::converter::{Converter, Route};

/// The most converters one chained conversion runs in a row.
pub const MAX_CHAIN_HOPS: usize = 3;

/// One route and the converter that serves it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouteInfo {
    /// From.
    pub source: Format,
    /// To.
    pub target: Format,
    /// The converter's name; for a chain, the hops' converters joined with `+`.
    pub converter: String,
    /// The formats a chained route passes through, in order; empty for a direct route.
    pub via: Vec<Format>,
}

/// Converters by route. A converter registered later takes over the routes it shares with an
/// earlier one, so an application can replace a built-in converter for some routes.
///
/// Pairs no converter serves directly are reached through chains ([`ConverterRegistry::plan`]).
#[derive(Debug, Clone, Default)]
pub struct ConverterRegistry {
    routes: BTreeMap<Route, Arc<dyn Converter>>,
    notes: BTreeMap<String, String>,
}

impl ConverterRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a converter for every route it declares.
    pub fn register(&mut self, converter: Arc<dyn Converter>) -> &mut Self {
        for route in converter.routes() {
            self.routes.insert(route, Arc::clone(&converter));
        }
        self
    }

    /// Adds a converter (builder style).
    pub fn with(mut self, converter: Arc<dyn Converter>) -> Self {
        self.register(converter);
        self
    }

    /// Records a line about how the registry was assembled (a family of routes switched on or
    /// off, and why), shown by `converto formats` and `/readyz`.
    pub fn set_note(&mut self, topic: impl Into<String>, note: impl Into<String>) -> &mut Self {
        self.notes.insert(topic.into(), note.into());
        self
    }

    /// The notes, by topic.
    pub fn notes(&self) -> &BTreeMap<String, String> {
        &self.notes
    }

    /// The converter serving a route directly (no chain).
    pub fn find(&self, source: &Format, target: &Format) -> Option<&Arc<dyn Converter>> {
        self.routes.get(&Route::new(source.clone(), target.clone()))
    }

    /// The converter for `source -> target`: the direct one, else a [`ChainConverter`] over
    /// the path [`plan`](Self::plan) chooses.
    pub fn resolve(&self, source: &Format, target: &Format) -> Option<Arc<dyn Converter>> {
        if let Some(direct) = self.find(source, target) {
            return Some(Arc::clone(direct));
        }
        let hops = self
            .plan(source, target)?
            .into_iter()
            .filter_map(|route| {
                let converter = Arc::clone(self.routes.get(&route)?);
                Some(Hop { route, converter })
            })
            .collect();
        ChainConverter::new(hops).map(|c| Arc::new(c) as Arc<dyn Converter>)
    }

    /// The path for `source -> target` when no converter serves it directly: the fewest hops
    /// (at most [`MAX_CHAIN_HOPS`]); among paths as short, the one whose intermediate formats
    /// come first in alphabetical order (compared hop by hop), so the choice is stable across
    /// processes and registration orders. `None` when the pair is served directly, or is
    /// unreachable, or `source == target`.
    pub fn plan(&self, source: &Format, target: &Format) -> Option<Vec<Route>> {
        if source == target || self.find(source, target).is_some() {
            return None;
        }
        self.paths_from(source).remove(target)
    }

    /// Breadth-first from `source`, neighbours in sorted order: the first path found to a
    /// format is a shortest one, and the alphabetically first among those.
    fn paths_from(&self, source: &Format) -> BTreeMap<Format, Vec<Route>> {
        let mut next: BTreeMap<&Format, BTreeSet<&Format>> = BTreeMap::new();
        for r in self.routes.keys() {
            next.entry(&r.source).or_default().insert(&r.target);
        }
        let mut found: BTreeMap<Format, Vec<Route>> = BTreeMap::new();
        let mut queue = VecDeque::from([(source.clone(), Vec::<Route>::new())]);
        while let Some((at, path)) = queue.pop_front() {
            if path.len() >= MAX_CHAIN_HOPS {
                continue;
            }
            for &to in next.get(&at).into_iter().flatten() {
                if to == source {
                    // A direct identity route (jpeg -> jpeg: resize, stl -> stl: re-encode) is
                    // listed; a chain never returns to its source.
                    if path.is_empty() {
                        found.insert(to.clone(), vec![Route::new(at.clone(), to.clone())]);
                    }
                    continue;
                }
                if found.contains_key(to) {
                    continue;
                }
                let mut longer = path.clone();
                longer.push(Route::new(at.clone(), to.clone()));
                found.insert(to.clone(), longer.clone());
                queue.push_back((to.clone(), longer));
            }
        }
        found
    }

    /// Every route served directly, sorted.
    pub fn routes(&self) -> Vec<RouteInfo> {
        self.routes
            .iter()
            .map(|(r, c)| RouteInfo {
                source: r.source.clone(),
                target: r.target.clone(),
                converter: c.name().to_owned(),
                via: Vec::new(),
            })
            .collect()
    }

    /// Every pair that can be converted, directly or through a chain, sorted; chained pairs
    /// name the formats they pass through.
    pub fn reachable(&self) -> Vec<RouteInfo> {
        let sources: BTreeSet<&Format> = self.routes.keys().map(|r| &r.source).collect();
        let mut out = Vec::new();
        for source in sources {
            for (target, path) in self.paths_from(source) {
                let via: Vec<Format> = path[1..].iter().map(|r| r.source.clone()).collect();
                let converter = path
                    .iter()
                    .filter_map(|r| self.routes.get(r).map(|c| c.name().to_owned()))
                    .collect::<Vec<_>>()
                    .join("+");
                out.push(RouteInfo {
                    source: source.clone(),
                    target,
                    converter,
                    via,
                });
            }
        }
        out
    }

    /// The targets reachable from a source format, directly or through a chain.
    pub fn targets_for(&self, source: &Format) -> Vec<Format> {
        self.paths_from(source).into_keys().collect()
    }

    /// Whether no converter is registered.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::converter_fn;

    fn route(s: &str, t: &str) -> Route {
        Route::parse(s, t).expect("route")
    }

    fn registry() -> ConverterRegistry {
        let cad = converter_fn("cad", [route("step", "stl")], |_, b| Ok(b));
        let mesh = converter_fn(
            "mesh",
            Route::all_pairs(&[
                Format::new("stl").expect("f"),
                Format::new("obj").expect("f"),
                Format::new("ply").expect("f"),
            ]),
            |_, b| Ok(b),
        );
        let gltf = converter_fn(
            "gltf",
            [route("ply", "glb"), route("obj", "glb")],
            |_, b| Ok(b),
        );
        ConverterRegistry::new().with(cad).with(mesh).with(gltf)
    }

    #[test]
    fn direct_routes_are_not_chained() {
        let r = registry();
        let f = |s: &str| Format::new(s).expect("f");
        assert!(r.plan(&f("stl"), &f("obj")).is_none());
        assert_eq!(
            r.resolve(&f("stl"), &f("obj")).map(|c| c.name().to_owned()),
            Some("mesh".into())
        );
    }

    #[test]
    fn the_shortest_path_wins_and_ties_go_alphabetically() {
        let r = registry();
        let f = |s: &str| Format::new(s).expect("f");
        assert_eq!(
            r.plan(&f("step"), &f("obj")),
            Some(vec![route("step", "stl"), route("stl", "obj")])
        );
        // stl -> glb: via obj or via ply, both two hops: obj comes first.
        assert_eq!(
            r.plan(&f("stl"), &f("glb")),
            Some(vec![route("stl", "obj"), route("obj", "glb")])
        );
        assert_eq!(
            r.plan(&f("step"), &f("glb")),
            Some(vec![
                route("step", "stl"),
                route("stl", "obj"),
                route("obj", "glb")
            ])
        );
        assert!(r.plan(&f("obj"), &f("step")).is_none());
        assert!(r.plan(&f("step"), &f("step")).is_none());
    }

    #[test]
    fn chains_stop_at_the_hop_limit() {
        let mut r = ConverterRegistry::new();
        for (s, t) in [("a", "b"), ("b", "c"), ("c", "d"), ("d", "e")] {
            r.register(converter_fn(s, [route(s, t)], |_, b| Ok(b)));
        }
        let f = |s: &str| Format::new(s).expect("f");
        assert_eq!(r.plan(&f("a"), &f("d")).map(|p| p.len()), Some(3));
        assert!(r.plan(&f("a"), &f("e")).is_none());
        assert!(r.resolve(&f("a"), &f("e")).is_none());
    }

    #[test]
    fn reachable_pairs_name_their_path() {
        let r = registry();
        let all = r.reachable();
        let step_obj = all
            .iter()
            .find(|i| i.source.as_str() == "step" && i.target.as_str() == "obj")
            .expect("step -> obj listed");
        assert_eq!(step_obj.via, vec![Format::new("stl").expect("f")]);
        assert_eq!(step_obj.converter, "cad+mesh");
        let direct = all
            .iter()
            .find(|i| i.source.as_str() == "stl" && i.target.as_str() == "obj")
            .expect("stl -> obj listed");
        assert!(direct.via.is_empty());
        // Chained: step -> obj, step -> ply, step -> glb, stl -> glb.
        assert_eq!(all.len(), r.routes().len() + 4);
    }
}
