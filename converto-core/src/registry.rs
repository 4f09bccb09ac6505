//! Routes (source, target) pairs to converters.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use crate::Format;
use crate::converter::{Converter, Route};

/// One route and the converter that serves it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouteInfo {
    /// From.
    pub source: Format,
    /// To.
    pub target: Format,
    /// The converter's name.
    pub converter: String,
}

/// Converters by route. A converter registered later takes over the routes it shares with an
/// earlier one, so an application can replace a built-in converter for some routes.
#[derive(Debug, Clone, Default)]
pub struct ConverterRegistry {
    routes: BTreeMap<Route, Arc<dyn Converter>>,
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

    /// The converter for a route.
    pub fn find(&self, source: &Format, target: &Format) -> Option<&Arc<dyn Converter>> {
        self.routes.get(&Route::new(source.clone(), target.clone()))
    }

    /// Every route, sorted.
    pub fn routes(&self) -> Vec<RouteInfo> {
        self.routes
            .iter()
            .map(|(r, c)| RouteInfo {
                source: r.source.clone(),
                target: r.target.clone(),
                converter: c.name().to_owned(),
            })
            .collect()
    }

    /// The targets reachable from a source format.
    pub fn targets_for(&self, source: &Format) -> Vec<Format> {
        self.routes
            .keys()
            .filter(|r| &r.source == source)
            .map(|r| r.target.clone())
            .collect()
    }

    /// Whether no converter is registered.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}
