//! Paging for every list: `page` (from 1) and `per_page` (1 to 500, default
//! 50) parsed at the boundary, answered as `{items, total, page, per_page}`.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Largest page a client may ask for.
pub const MAX_PER_PAGE: u32 = 500;
/// Page size when none is asked for.
pub const DEFAULT_PER_PAGE: u32 = 50;

/// A validated page request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    /// 1-based page number.
    pub page: u32,
    /// Items per page.
    pub per_page: u32,
}

impl Default for Page {
    fn default() -> Self {
        Page {
            page: 1,
            per_page: DEFAULT_PER_PAGE,
        }
    }
}

impl Page {
    /// Parses the raw query values, naming the field that is wrong.
    pub fn parse(page: Option<&str>, per_page: Option<&str>) -> Result<Page> {
        let page = match page {
            None | Some("") => 1,
            Some(s) => s
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=1_000_000).contains(n))
                .ok_or_else(|| Error::invalid("page", "must be a whole number from 1"))?,
        };
        let per_page = match per_page {
            None | Some("") => DEFAULT_PER_PAGE,
            Some(s) => s
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=MAX_PER_PAGE).contains(n))
                .ok_or_else(|| {
                    Error::invalid(
                        "per_page",
                        format!("must be a whole number from 1 to {MAX_PER_PAGE}"),
                    )
                })?,
        };
        Ok(Page { page, per_page })
    }

    /// SQL LIMIT.
    pub fn limit(self) -> i64 {
        i64::from(self.per_page)
    }

    /// SQL OFFSET.
    pub fn offset(self) -> i64 {
        i64::from(self.page - 1) * i64::from(self.per_page)
    }

    /// Wraps one page of items with the paging fields.
    pub fn wrap<T>(self, items: Vec<T>, total: i64) -> Paged<T> {
        Paged {
            items,
            total,
            page: self.page,
            per_page: self.per_page,
        }
    }

    /// Number of pages for a total (at least 1).
    pub fn pages(self, total: i64) -> i64 {
        ((total + self.limit() - 1) / self.limit()).max(1)
    }
}

/// The query parameters every list accepts.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Page number, from 1.
    pub page: Option<String>,
    /// Items per page, 1 to 500 (default 50).
    pub per_page: Option<String>,
}

impl PageQuery {
    /// The validated page.
    pub fn page(&self) -> Result<Page> {
        Page::parse(self.page.as_deref(), self.per_page.as_deref())
    }
}

/// One page of a list.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Paged<T> {
    /// The items on this page.
    pub items: Vec<T>,
    /// How many items the whole list has.
    pub total: i64,
    /// This page's number.
    pub page: u32,
    /// Page size.
    pub per_page: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_offsets() {
        let p = Page::parse(None, None).expect("default");
        assert_eq!((p.page, p.per_page, p.offset()), (1, 50, 0));
        let p = Page::parse(Some("3"), Some("10")).expect("valid");
        assert_eq!(p.offset(), 20);
        assert_eq!(p.pages(21), 3);
    }

    #[test]
    fn bad_values_name_the_field() {
        let e = Page::parse(Some("0"), None).unwrap_err().to_string();
        assert!(e.starts_with("page:"), "{e}");
        let e = Page::parse(None, Some("501")).unwrap_err().to_string();
        assert!(e.starts_with("per_page:"), "{e}");
        let e = Page::parse(None, Some("x")).unwrap_err().to_string();
        assert!(e.starts_with("per_page:"), "{e}");
    }
}
