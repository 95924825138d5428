//! Operators and admins: accounts with argon2id password hashes and a role,
//! their dashboard sessions, API tokens, JWTs and login throttling.
//! The last admin can never be deleted, so a fleet is never locked out.

pub mod api_tokens;
pub mod jwt;
pub mod password;
pub mod sessions;
pub mod throttle;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::on_store;
use crate::store::{Store, is_unique_violation, now_ms};

/// What a user may do: viewers read, operators also change the fleet, admins also manage people and keys.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads everything.
    Viewer,
    /// Also manages devices, bundles, rollouts and enrollment tokens.
    Operator,
    /// Also manages users, keys and API tokens.
    Admin,
}

impl Role {
    /// The stored and displayed name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    /// Parses a stored or submitted role name.
    pub fn parse(field: &str, s: &str) -> Result<Role> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            other => Err(Error::invalid(
                field,
                format!("{other:?} is not a role; use admin, operator or viewer"),
            )),
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A validated user name: 1 to 64 letters, digits, `.`, `_` or `-`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Username(String);

impl Username {
    /// Checks the name at the boundary.
    pub fn parse(s: &str) -> Result<Username> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if ok {
            Ok(Username(s.to_string()))
        } else {
            Err(Error::invalid(
                "username",
                "use 1 to 64 letters, digits, '.', '_' or '-'",
            ))
        }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A stored account.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct User {
    /// Stable id (UUID v7).
    pub id: String,
    /// Login name.
    pub username: String,
    /// PHC string of the argon2id hash.
    pub password_hash: String,
    /// Role name.
    pub role: String,
    /// Set for the generated first admin until its password is changed.
    pub must_change_password: bool,
    /// Creation time (ms).
    pub created_at: i64,
    /// Last change (ms).
    pub updated_at: i64,
}

impl User {
    /// The role, which the table's CHECK keeps valid.
    pub fn role(&self) -> Role {
        Role::parse("role", &self.role).unwrap_or(Role::Viewer)
    }
}

const USER_COLUMNS: &str =
    "id, username, password_hash, role, must_change_password, created_at, updated_at";

/// Creates a user; the password is hashed off the async threads.
pub async fn create(
    store: &Store,
    username: &Username,
    password: &str,
    role: Role,
    must_change_password: bool,
) -> Result<User> {
    password::check_strength(password)?;
    let hash = password::hash(password.to_string()).await?;
    let now = now_ms();
    let user = User {
        id: uuid::Uuid::now_v7().to_string(),
        username: username.as_str().to_string(),
        password_hash: hash,
        role: role.as_str().to_string(),
        must_change_password,
        created_at: now,
        updated_at: now,
    };
    let inserted = on_store!(store, pool => sqlx::query(
        "INSERT INTO users (id, username, password_hash, role, must_change_password, created_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)")
        .bind(&user.id).bind(&user.username).bind(&user.password_hash).bind(&user.role)
        .bind(user.must_change_password).bind(user.created_at).bind(user.updated_at)
        .execute(pool).await.map(|r| r.rows_affected()));
    match inserted {
        Ok(_) => Ok(user),
        Err(e) if is_unique_violation(&e) => Err(Error::Conflict(format!(
            "a user named {:?} already exists",
            user.username
        ))),
        Err(e) => Err(e.into()),
    }
}

/// Finds a user by id.
pub async fn get(store: &Store, id: &str) -> Result<Option<User>> {
    let sql = sqlx::AssertSqlSafe(format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"));
    Ok(
        on_store!(store, pool => sqlx::query_as::<_, User>(sql).bind(id).fetch_optional(pool).await)?,
    )
}

/// Finds a user by name.
pub async fn find_by_name(store: &Store, username: &str) -> Result<Option<User>> {
    let sql = sqlx::AssertSqlSafe(format!(
        "SELECT {USER_COLUMNS} FROM users WHERE username = $1"
    ));
    Ok(
        on_store!(store, pool => sqlx::query_as::<_, User>(sql).bind(username).fetch_optional(pool).await)?,
    )
}

/// One page of users by name, and the total count.
pub async fn list(store: &Store, page: crate::paging::Page) -> Result<(Vec<User>, i64)> {
    let sql = sqlx::AssertSqlSafe(format!(
        "SELECT {USER_COLUMNS} FROM users ORDER BY username LIMIT $1 OFFSET $2"
    ));
    let items = on_store!(store, pool => sqlx::query_as::<_, User>(sql)
        .bind(page.limit()).bind(page.offset()).fetch_all(pool).await)?;
    let total: i64 = on_store!(store, pool => sqlx::query_scalar("SELECT COUNT(*) FROM users")
        .fetch_one(pool).await)?;
    Ok((items, total))
}

/// Counts users; zero means the server has never started.
pub async fn count(store: &Store) -> Result<i64> {
    Ok(
        on_store!(store, pool => sqlx::query_scalar("SELECT COUNT(*) FROM users")
        .fetch_one(pool).await)?,
    )
}

/// Deletes a user with their sessions and API tokens; refuses to delete the last admin.
pub async fn delete(store: &Store, id: &str) -> Result<User> {
    let user = get(store, id)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no user with id {id}")))?;
    if user.role() == Role::Admin {
        let admins: i64 = on_store!(store, pool => sqlx::query_scalar(
            "SELECT COUNT(*) FROM users WHERE role = 'admin'").fetch_one(pool).await)?;
        if admins <= 1 {
            return Err(Error::Conflict(
                "this is the last admin; create another admin before deleting it".into(),
            ));
        }
    }
    on_store!(store, pool => sqlx::query("DELETE FROM users WHERE id = $1").bind(id).execute(pool).await.map(|r| r.rows_affected()))?;
    Ok(user)
}

/// Checks a user name and password; the same work is done for unknown names so timing tells nothing.
pub async fn authenticate(store: &Store, username: &str, password: &str) -> Result<User> {
    let user = find_by_name(store, username).await?;
    let hash = user
        .as_ref()
        .map(|u| u.password_hash.clone())
        .unwrap_or_else(|| password::dummy_hash().to_string());
    let ok = password::verify(password.to_string(), hash).await?;
    match user {
        Some(user) if ok => Ok(user),
        _ => Err(Error::Unauthorized("wrong user name or password".into())),
    }
}

/// Replaces a user's password after checking the current one, and ends their other sessions.
pub async fn change_password(
    store: &Store,
    user: &User,
    current: &str,
    new: &str,
    keep_session_hash: Option<&str>,
) -> Result<()> {
    if !password::verify(current.to_string(), user.password_hash.clone()).await? {
        return Err(Error::invalid(
            "current_password",
            "does not match the current password",
        ));
    }
    if current == new {
        return Err(Error::invalid(
            "new_password",
            "must differ from the current password",
        ));
    }
    password::check_strength(new).map_err(|e| match e {
        Error::Invalid { message, .. } => Error::invalid("new_password", message),
        other => other,
    })?;
    let hash = password::hash(new.to_string()).await?;
    on_store!(store, pool => sqlx::query(
        "UPDATE users SET password_hash = $1, must_change_password = FALSE, updated_at = $2 WHERE id = $3")
        .bind(&hash).bind(now_ms()).bind(&user.id).execute(pool).await.map(|r| r.rows_affected()))?;
    sessions::delete_for_user_except(store, &user.id, keep_session_hash).await?;
    Ok(())
}

/// Creates the first admin with a random one-time password when the server has no users yet.
pub async fn ensure_first_admin(store: &Store) -> Result<Option<String>> {
    if count(store).await? > 0 {
        return Ok(None);
    }
    let password = crate::secrets::random_text(20);
    let name = Username::parse("admin")?;
    match create(store, &name, &password, Role::Admin, true).await {
        Ok(_) => Ok(Some(password)),
        // Another replica created it first.
        Err(Error::Conflict(_)) => Ok(None),
        Err(e) => Err(e),
    }
}
