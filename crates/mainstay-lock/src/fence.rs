//! Fenced resources: checkers that sit **in front of the protected data** and reject a write
//! carrying a fencing token lower than the highest one they have seen (seed: "Fencing
//! Tokens Pattern"). This is the only protection that holds when a lease-based lock grants
//! one lock to two holders (a paused or partitioned holder whose lease expired).
//!
//! - **PostgreSQL**: [`POSTGRES_GUARD_SQL`] installs `mainstay_fence_check(resource, token)`
//!   (also `mainstay fence install --postgres URL`). Call it **in the same transaction** as
//!   the protected write: it raises SQLSTATE `MSF01` for a stale token, and holds the
//!   resource's row lock until commit, so a concurrent newer holder cannot interleave.
//! - **Redis**: [`REDIS_GUARD_LIBRARY`] is a Redis 7 function library (also
//!   `mainstay fence install --redis URL`) with `FCALL mainstay_fenced_set 2 key fence_key
//!   token value` and `FCALL mainstay_fenced_del 2 key fence_key token`: the check and the
//!   write run atomically in one function call. A stale token gets the error
//!   `STALE_FENCING_TOKEN presented=<t> current=<c>`.
//!
//! Equal tokens pass (one holder writes many times). The guard state (highest token per
//! resource) must live where the data lives; that is what makes the check atomic.

/// SQL that installs the PostgreSQL guard (idempotent).
pub const POSTGRES_GUARD_SQL: &str = r#"
CREATE TABLE IF NOT EXISTS mainstay_fence (
    resource      text PRIMARY KEY,
    highest_token bigint NOT NULL
);
CREATE OR REPLACE FUNCTION mainstay_fence_check(p_resource text, p_token bigint)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    v_current bigint;
BEGIN
    IF p_token IS NULL OR p_token < 0 THEN
        RAISE EXCEPTION 'invalid fencing token %', p_token USING ERRCODE = '22023';
    END IF;
    INSERT INTO mainstay_fence AS f (resource, highest_token) VALUES (p_resource, p_token)
    ON CONFLICT (resource) DO UPDATE SET highest_token = EXCLUDED.highest_token
    WHERE f.highest_token <= EXCLUDED.highest_token;
    IF NOT FOUND THEN
        SELECT highest_token INTO v_current FROM mainstay_fence WHERE resource = p_resource;
        RAISE EXCEPTION 'stale fencing token % for resource % (current %)', p_token, p_resource, v_current
            USING ERRCODE = 'MSF01', DETAIL = format('presented=%s current=%s', p_token, v_current);
    END IF;
END
$$;
"#;

/// The Redis 7 function library of the Redis guard (load with `FUNCTION LOAD REPLACE`).
pub const REDIS_GUARD_LIBRARY: &str = r#"#!lua name=mainstay_fence
local function check(keys, token)
  local t = tonumber(token)
  if not t then return redis.error_reply('ERR invalid fencing token') end
  local cur = tonumber(redis.call('GET', keys[2]) or '-1')
  if t < cur then
    return redis.error_reply(string.format('STALE_FENCING_TOKEN presented=%s current=%s', token, redis.call('GET', keys[2])))
  end
  if t > cur then redis.call('SET', keys[2], token) end
  return nil
end
redis.register_function('mainstay_fenced_set', function(keys, args)
  local err = check(keys, args[1])
  if err then return err end
  return redis.call('SET', keys[1], args[2])
end)
redis.register_function('mainstay_fenced_del', function(keys, args)
  local err = check(keys, args[1])
  if err then return err end
  return redis.call('DEL', keys[1])
end)
"#;

/// A write was refused because its token is older than one the resource has seen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stale fencing token: presented {presented}, resource has seen {current}")]
pub struct StaleFencingToken {
    /// The token the writer presented.
    pub presented: u64,
    /// The highest token the resource has accepted.
    pub current: u64,
}

/// Parses the `presented=… current=…` detail both guards report.
pub fn parse_stale(text: &str) -> Option<StaleFencingToken> {
    let field = |key: &str| {
        let start = text.find(key)? + key.len();
        let digits: String = text[start..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse::<u64>().ok()
    };
    Some(StaleFencingToken {
        presented: field("presented=")?,
        current: field("current=")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_guard_errors() {
        let e = parse_stale("STALE_FENCING_TOKEN presented=33 current=34").unwrap();
        assert_eq!(
            e,
            StaleFencingToken {
                presented: 33,
                current: 34
            }
        );
        assert!(parse_stale("something else").is_none());
    }
}

/// PostgreSQL guard helpers (feature `postgres`).
#[cfg(feature = "postgres")]
pub mod postgres {
    use super::{parse_stale, StaleFencingToken, POSTGRES_GUARD_SQL};

    /// Why a fenced PostgreSQL write failed.
    #[derive(Debug, thiserror::Error)]
    #[non_exhaustive]
    pub enum FenceError {
        /// The token is older than one the resource has accepted.
        #[error(transparent)]
        Stale(StaleFencingToken),
        /// Any other database error.
        #[error("postgres: {}", message(.0))]
        Db(#[from] tokio_postgres::Error),
    }

    /// The server's message when there is one (tokio-postgres displays only "db error").
    fn message(e: &tokio_postgres::Error) -> String {
        e.as_db_error()
            .map(|d| format!("{}: {}", d.code().code(), d.message()))
            .unwrap_or_else(|| e.to_string())
    }

    /// Installs (or replaces) the guard table and function. Idempotent.
    pub async fn install(client: &tokio_postgres::Client) -> Result<(), tokio_postgres::Error> {
        client.batch_execute(POSTGRES_GUARD_SQL).await
    }

    /// Checks `token` for `resource`; call inside the transaction of the protected write.
    pub async fn check(
        client: &impl tokio_postgres::GenericClient,
        resource: &str,
        token: u64,
    ) -> Result<(), FenceError> {
        match client
            .execute(
                "SELECT mainstay_fence_check($1, $2)",
                &[&resource, &(token as i64)],
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                let stale = e
                    .as_db_error()
                    .filter(|d| d.code().code() == "MSF01")
                    .and_then(|d| d.detail().and_then(parse_stale));
                match stale {
                    Some(s) => Err(FenceError::Stale(s)),
                    None => Err(FenceError::Db(e)),
                }
            }
        }
    }
}

/// Redis guard helpers (feature `redis`).
#[cfg(feature = "redis")]
pub mod redis {
    use super::{parse_stale, StaleFencingToken, REDIS_GUARD_LIBRARY};

    /// Why a fenced Redis write failed.
    #[derive(Debug, thiserror::Error)]
    #[non_exhaustive]
    pub enum FenceError {
        /// The token is older than one the resource has accepted.
        #[error(transparent)]
        Stale(StaleFencingToken),
        /// Any other Redis error.
        #[error("redis: {0}")]
        Redis(#[from] ::redis::RedisError),
    }

    /// Loads (or replaces) the `mainstay_fence` function library. Idempotent.
    pub async fn install(
        conn: &mut impl ::redis::aio::ConnectionLike,
    ) -> Result<(), ::redis::RedisError> {
        ::redis::cmd("FUNCTION")
            .arg("LOAD")
            .arg("REPLACE")
            .arg(REDIS_GUARD_LIBRARY)
            .query_async::<String>(conn)
            .await
            .map(|_| ())
    }

    fn map(e: ::redis::RedisError) -> FenceError {
        match parse_stale(&e.to_string()) {
            Some(s) if e.to_string().contains("STALE_FENCING_TOKEN") => FenceError::Stale(s),
            _ => FenceError::Redis(e),
        }
    }

    /// `SET key value` if `token` is not older than the highest seen in `fence_key`.
    pub async fn fenced_set(
        conn: &mut impl ::redis::aio::ConnectionLike,
        key: &str,
        fence_key: &str,
        token: u64,
        value: &str,
    ) -> Result<(), FenceError> {
        ::redis::cmd("FCALL")
            .arg("mainstay_fenced_set")
            .arg(2)
            .arg(key)
            .arg(fence_key)
            .arg(token)
            .arg(value)
            .query_async::<::redis::Value>(conn)
            .await
            .map(|_| ())
            .map_err(map)
    }

    /// `DEL key` if `token` is not older than the highest seen in `fence_key`.
    pub async fn fenced_del(
        conn: &mut impl ::redis::aio::ConnectionLike,
        key: &str,
        fence_key: &str,
        token: u64,
    ) -> Result<(), FenceError> {
        ::redis::cmd("FCALL")
            .arg("mainstay_fenced_del")
            .arg(2)
            .arg(key)
            .arg(fence_key)
            .arg(token)
            .query_async::<::redis::Value>(conn)
            .await
            .map(|_| ())
            .map_err(map)
    }
}
