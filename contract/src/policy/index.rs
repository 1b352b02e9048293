//! Which policies apply to which workload, decided once when a set is compiled.
//!
//! A document applies to its namespace's workloads, narrowed to one service by a selector;
//! documents in [`MESH_NAMESPACE`] apply to workloads of every namespace. Lookups borrow the
//! request's strings (nested maps), so finding the candidates allocates nothing and costs the
//! same however many unrelated documents the mesh holds.

use std::collections::HashMap;
use std::sync::Arc;

/// Documents in this namespace apply mesh-wide (as Istio's root namespace).
pub const MESH_NAMESPACE: &str = "palisade-system";

/// The destination workload.
#[derive(Debug, Clone, Copy)]
pub struct Workload<'a> {
    pub namespace: &'a str,
    pub service: &'a str,
}

#[derive(Debug)]
pub struct WorkloadIndex<T> {
    by_service: HashMap<String, HashMap<String, Vec<Arc<T>>>>,
    by_namespace: HashMap<String, Vec<Arc<T>>>,
    mesh_by_service: HashMap<String, Vec<Arc<T>>>,
    mesh_wide: Vec<Arc<T>>,
    len: usize,
}

impl<T> Default for WorkloadIndex<T> {
    fn default() -> Self {
        Self {
            by_service: HashMap::new(),
            by_namespace: HashMap::new(),
            mesh_by_service: HashMap::new(),
            mesh_wide: Vec::new(),
            len: 0,
        }
    }
}

impl<T> WorkloadIndex<T> {
    pub fn insert(&mut self, namespace: &str, service: Option<&str>, item: T) {
        let item = Arc::new(item);
        self.len += 1;
        match (service, namespace == MESH_NAMESPACE) {
            (Some(svc), false) => self
                .by_service
                .entry(namespace.to_owned())
                .or_default()
                .entry(svc.to_owned())
                .or_default()
                .push(item),
            (None, false) => self
                .by_namespace
                .entry(namespace.to_owned())
                .or_default()
                .push(item),
            (Some(svc), true) => self
                .mesh_by_service
                .entry(svc.to_owned())
                .or_default()
                .push(item),
            (None, true) => self.mesh_wide.push(item),
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The documents that apply to `w`, and only those.
    pub fn candidates<'s>(&'s self, w: &Workload<'_>) -> impl Iterator<Item = &'s T> {
        let lists: [Option<&'s Vec<Arc<T>>>; 4] = [
            self.by_service
                .get(w.namespace)
                .and_then(|m| m.get(w.service)),
            self.by_namespace.get(w.namespace),
            self.mesh_by_service.get(w.service),
            Some(&self.mesh_wide),
        ];
        lists.into_iter().flatten().flatten().map(|p| p.as_ref())
    }
}
