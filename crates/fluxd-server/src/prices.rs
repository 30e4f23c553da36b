//! What a submit costs: the endpoint's price (`fluxd credits price`, stored in the database)
//! applied to the task's output megapixels. Prices are read through a small cache, so a submit
//! does not read them each time: a price changed by `fluxd credits price` (another process) is
//! charged by this one within [`PRICE_CACHE_TTL`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fluxd_store::{Price, Store, StoreError};

use crate::cache::TtlCache;

/// How long a process charges the prices it read.
pub const PRICE_CACHE_TTL: Duration = Duration::from_secs(5);

/// Every endpoint's price, as last read.
pub struct PriceCache {
    cache: TtlCache<(), Arc<HashMap<String, Price>>>,
}

impl Default for PriceCache {
    fn default() -> Self {
        Self {
            cache: TtlCache::new(1),
        }
    }
}

impl PriceCache {
    /// What a task of `endpoint` with `output_mp` megapixels costs, in thousandths of a credit;
    /// None when the endpoint has no price (free).
    pub async fn cost(
        &self,
        store: &dyn Store,
        endpoint: &str,
        output_mp: f64,
    ) -> Result<Option<i64>, StoreError> {
        let prices = match self.cache.get(&()) {
            Some(prices) => prices,
            None => {
                let read: HashMap<String, Price> = store.prices().await?.into_iter().collect();
                let read = Arc::new(read);
                let expires = Instant::now() + PRICE_CACHE_TTL;
                self.cache.insert((), Arc::clone(&read), Some(expires));
                read
            }
        };
        Ok(prices.get(endpoint).map(|price| price.cost(output_mp)))
    }
}
