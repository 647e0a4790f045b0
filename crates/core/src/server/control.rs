//! Operator actions on backends: persisted first, then applied. One runs at a
//! time, under the same lock as reloads.

use std::sync::Arc;

use super::{ControlError, Server};
use crate::health::AdminState;
use crate::pool::{BackendView, Pool};

impl Server {
    /// Enables, drains or disables a backend. Saved to the state file first;
    /// when that fails nothing changes.
    pub async fn set_admin(
        &self,
        pool: &str,
        backend: &str,
        admin: AdminState,
    ) -> Result<BackendView, ControlError> {
        let _one = self.change_lock().await?;
        let p = self.find(pool, backend)?;
        if let Some(persist) = &self.persistence {
            persist
                .set_admin(pool, backend, admin)
                .await
                .map_err(|e| ControlError::State(e.to_string()))?;
        }
        let was = p.backend(backend).map(crate::pool::Backend::admin);
        p.set_admin(backend, admin);
        if was == Some(AdminState::Disabled) && admin != AdminState::Disabled {
            // Its health starts again at unknown: probe it now.
            if let Some(at) = p.backend(backend).and_then(|b| b.probe_address) {
                self.probes.probe_now(at);
            }
        }
        view(&p, backend)
    }

    /// Overrides a backend's weight (`None` restores the configured one).
    /// Saved first, like [`Server::set_admin`].
    pub async fn set_weight(
        &self,
        pool: &str,
        backend: &str,
        weight: Option<u32>,
    ) -> Result<BackendView, ControlError> {
        if let Some(w) = weight.filter(|&w| w > weir_config::MAX_WEIGHT) {
            return Err(ControlError::Weight(w));
        }
        let _one = self.change_lock().await?;
        let p = self.find(pool, backend)?;
        if let Some(persist) = &self.persistence {
            persist
                .set_weight(pool, backend, weight)
                .await
                .map_err(|e| ControlError::State(e.to_string()))?;
        }
        p.set_weight(backend, weight);
        view(&p, backend)
    }

    fn find(&self, pool: &str, backend: &str) -> Result<Arc<Pool>, ControlError> {
        let p = self
            .pool(pool)
            .ok_or_else(|| ControlError::NoPool(pool.to_owned()))?;
        match p.backend(backend) {
            None => Err(ControlError::NoBackend {
                pool: pool.to_owned(),
                backend: backend.to_owned(),
            }),
            // Its weight and state are the drain's now: a change would
            // say it took while nothing changed.
            Some(b) if b.leaving => Err(ControlError::Leaving {
                pool: pool.to_owned(),
                backend: backend.to_owned(),
            }),
            Some(_) => Ok(p),
        }
    }
}

fn view(p: &Pool, backend: &str) -> Result<BackendView, ControlError> {
    p.view(backend).ok_or_else(|| ControlError::NoBackend {
        pool: p.name.clone(),
        backend: backend.to_owned(),
    })
}
