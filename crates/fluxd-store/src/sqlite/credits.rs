//! Credits on SQLite: balances and prices (the statements of [`crate::sql::credits`]). Debits
//! and refunds are the `tasks` triggers of schema version 5.

use sqlx::sqlite::{SqliteConnection, SqlitePool};

use crate::sql::credits::{self as sql, check_amount};
use crate::sqlite::map_sqlx;
use crate::time::now_millis;
use crate::{Price, StoreError};

pub(super) async fn balance(pool: &SqlitePool, tenant: &str) -> Result<Option<i64>, StoreError> {
    sqlx::query_scalar(sql::BALANCE)
        .bind(tenant)
        .fetch_optional(pool)
        .await
        .map_err(map_sqlx)
}

pub(super) async fn balances(pool: &SqlitePool) -> Result<Vec<(String, i64)>, StoreError> {
    let rows = sqlx::query(sql::BALANCES)
        .fetch_all(pool)
        .await
        .map_err(map_sqlx)?;
    rows.iter().map(sql::balance).collect()
}

async fn ensure_tenant(conn: &mut SqliteConnection, tenant: &str) -> Result<(), StoreError> {
    sqlx::query(sql::ENSURE_TENANT)
        .bind(tenant)
        .bind(now_millis())
        .execute(conn)
        .await
        .map_err(map_sqlx)?;
    Ok(())
}

pub(super) async fn set(
    conn: &mut SqliteConnection,
    tenant: String,
    balance: Option<i64>,
) -> Result<(), StoreError> {
    let Some(balance) = balance else {
        sqlx::query(sql::REMOVE_BALANCE)
            .bind(tenant)
            .execute(conn)
            .await
            .map_err(map_sqlx)?;
        return Ok(());
    };
    check_amount("a balance", balance)?;
    ensure_tenant(&mut *conn, &tenant).await?;
    sqlx::query(sql::SET_BALANCE)
        .bind(tenant)
        .bind(balance)
        .bind(now_millis())
        .execute(conn)
        .await
        .map_err(map_sqlx)?;
    Ok(())
}

pub(super) async fn add(
    conn: &mut SqliteConnection,
    tenant: String,
    delta: i64,
) -> Result<i64, StoreError> {
    ensure_tenant(&mut *conn, &tenant).await?;
    let found: Option<i64> = sqlx::query_scalar(sql::ADD_BALANCE)
        .bind(&tenant)
        .bind(delta)
        .bind(now_millis())
        .fetch_optional(conn)
        .await
        .map_err(map_sqlx)?;
    sql::added(&tenant, delta, found)
}

pub(super) async fn prices(pool: &SqlitePool) -> Result<Vec<(String, Price)>, StoreError> {
    let rows = sqlx::query(sql::PRICES)
        .fetch_all(pool)
        .await
        .map_err(map_sqlx)?;
    rows.iter().map(sql::price).collect()
}

pub(super) async fn set_price(
    conn: &mut SqliteConnection,
    endpoint: String,
    price: Option<Price>,
) -> Result<(), StoreError> {
    let query = match price {
        None => sqlx::query(sql::REMOVE_PRICE).bind(endpoint),
        Some(price) => {
            sql::check_price(&price)?;
            sqlx::query(sql::SET_PRICE)
                .bind(endpoint)
                .bind(price.per_task)
                .bind(price.per_megapixel)
                .bind(now_millis())
        }
    };
    query.execute(conn).await.map_err(map_sqlx)?;
    Ok(())
}
