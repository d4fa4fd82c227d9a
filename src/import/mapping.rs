//! Mappings: how the rows of a CSV or NDJSON export become touchpoint records, column by column.

use std::collections::BTreeMap;
use std::path::Path;

use chrono::{DateTime, FixedOffset, NaiveDateTime};
use patron_domain::touchpoint::{OneOrMany, RawTouchpoint, Rejection, RejectionCode};
use serde::Deserialize;
use serde_json::{Map, Value};
use thiserror::Error;
use uuid::Uuid;

/// The namespace of event ids derived from rows (UUIDv5), so that importing a file again gives
/// the same ids and stores nothing twice.
const ROW_NAMESPACE: Uuid = Uuid::from_u128(0x6a1f_0c2e_4b7d_4f3a_9c5e_2d8b_1e0f_7a3c);

/// Fields read as integers.
const INTEGER_FIELDS: [&str; 2] = ["total_minor", "amount_minor"];
/// Fields read as true or false.
const BOOLEAN_FIELDS: [&str; 1] = ["granted"];

/// The file formats an import reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Comma-separated values with a header row.
    Csv,
    /// One JSON object per line.
    Ndjson,
}

/// Columns of one order line.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ItemColumns {
    /// The product's SKU.
    pub sku: String,
    /// The product's category.
    pub category: Option<String>,
    /// How many units.
    pub quantity: String,
    /// The price of one unit, in minor units.
    pub unit_price_minor: String,
    /// The discount on the line, in minor units.
    pub discount_minor: Option<String>,
}

/// How a file's rows become records, as written in a mapping TOML file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mapping {
    /// The file's format; by default taken from its extension.
    pub format: Option<Format>,
    /// The event type of every row...
    #[serde(rename = "type")]
    pub event_type: Option<String>,
    /// ...or the column holding it.
    pub type_column: Option<String>,
    /// The channel of every row.
    pub channel: Option<String>,
    /// The channel column, if rows differ.
    pub channel_column: Option<String>,
    /// The source system of every row.
    pub source: Option<String>,
    /// The offset of times written without a zone, such as `+08:00`.
    pub utc_offset: Option<String>,
    /// The `strftime` format of times, when they are not RFC 3339.
    pub time_format: Option<String>,
    /// The column of the event id (a UUID, or any value unique per source; without it the row's
    /// content makes the id).
    pub event_id: Option<String>,
    /// The column of the time the touchpoint happened.
    pub occurred_at: String,
    /// Identifier kind = column.
    #[serde(default)]
    pub identifiers: BTreeMap<String, String>,
    /// Action field = column (`order_id`, `url`, `store_id` ...).
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
    /// Action field = fixed value (`currency = "CNY"`).
    #[serde(default)]
    pub constants: BTreeMap<String, String>,
    /// For orders and carts: the columns of the row's line; consecutive rows with the same
    /// `order_id` form one order.
    pub item: Option<ItemColumns>,
    /// Other property = column.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

/// What is wrong with a mapping file.
#[derive(Debug, Error)]
pub enum MappingError {
    /// The file cannot be read.
    #[error("cannot read the mapping {path}")]
    Read {
        /// The file.
        path: String,
        /// The IO error.
        source: std::io::Error,
    },
    /// The file is not a valid mapping.
    #[error("the mapping {path} is invalid: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong, with its line.
        message: String,
    },
}

/// One row of a file: column name to text.
pub type Row = BTreeMap<String, String>;

impl Mapping {
    /// Reads and checks a mapping file.
    pub fn load(path: &Path) -> Result<Self, MappingError> {
        let text = std::fs::read_to_string(path).map_err(|source| MappingError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let mapping: Self = toml::from_str(&text).map_err(|e| MappingError::Invalid {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        mapping.check().map_err(|message| MappingError::Invalid {
            path: path.display().to_string(),
            message,
        })?;
        Ok(mapping)
    }

    fn check(&self) -> Result<(), String> {
        if self.event_type.is_none() == self.type_column.is_none() {
            return Err("give exactly one of `type` and `type_column`".into());
        }
        if self.channel.is_none() == self.channel_column.is_none() {
            return Err("give exactly one of `channel` and `channel_column`".into());
        }
        if self.source.is_none() {
            return Err("`source` (the system the file comes from) is required".into());
        }
        if self.identifiers.is_empty() {
            return Err("map at least one identifier column in [identifiers]".into());
        }
        if let Some(offset) = &self.utc_offset {
            offset
                .parse::<FixedOffset>()
                .map_err(|_| format!("utc_offset {offset:?} is not an offset such as +08:00"))?;
        }
        if self.item.is_some() && !self.fields.contains_key("order_id") {
            return Err("[item] needs an `order_id` column in [fields] to group lines".into());
        }
        Ok(())
    }

    /// The order id of a row, when rows are grouped into orders.
    pub fn group_key(&self, row: &Row) -> Option<String> {
        self.item.as_ref()?;
        self.fields
            .get("order_id")
            .and_then(|c| row.get(c))
            .cloned()
    }

    fn cell<'r>(row: &'r Row, column: &str) -> Result<&'r str, Rejection> {
        match row.get(column).map(|s| s.trim()) {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(Rejection {
                field: column.to_owned(),
                reason: "is empty or missing".into(),
                code: RejectionCode::MissingField,
            }),
        }
    }

    fn time(&self, row: &Row) -> Result<String, Rejection> {
        let column = &self.occurred_at;
        let text = Self::cell(row, column)?;
        let bad = |why: &str| Rejection {
            field: column.clone(),
            reason: format!("{text:?} {why}"),
            code: RejectionCode::InvalidTime,
        };
        if let Ok(t) = DateTime::parse_from_rfc3339(text) {
            return Ok(t.to_rfc3339());
        }
        let offset: FixedOffset = match &self.utc_offset {
            Some(o) => o
                .parse()
                .map_err(|_| bad("has no zone and utc_offset is invalid"))?,
            None => return Err(bad("is not RFC 3339 and the mapping gives no utc_offset")),
        };
        let format = self.time_format.as_deref().unwrap_or("%Y-%m-%d %H:%M:%S");
        let naive = NaiveDateTime::parse_from_str(text, format)
            .map_err(|_| bad(&format!("does not match the time format {format:?}")))?;
        naive
            .and_local_timezone(offset)
            .single()
            .map(|t| t.to_rfc3339())
            .ok_or_else(|| bad("is not a valid local time"))
    }

    fn integer(row: &Row, column: &str, field: &str) -> Result<i64, Rejection> {
        let text = Self::cell(row, column)?;
        text.parse().map_err(|_| Rejection {
            field: format!("{column} ({field})"),
            reason: format!("{text:?} is not a whole number"),
            code: RejectionCode::InvalidAmount,
        })
    }

    fn item(&self, row: &Row) -> Result<Option<Value>, Rejection> {
        let Some(item) = &self.item else {
            return Ok(None);
        };
        let mut line = Map::new();
        line.insert("sku".into(), Value::from(Self::cell(row, &item.sku)?));
        if let Some(c) = &item.category {
            if let Ok(v) = Self::cell(row, c) {
                line.insert("category".into(), Value::from(v));
            }
        }
        line.insert(
            "quantity".into(),
            Value::from(Self::integer(row, &item.quantity, "quantity")?),
        );
        line.insert(
            "unit_price_minor".into(),
            Value::from(Self::integer(
                row,
                &item.unit_price_minor,
                "unit_price_minor",
            )?),
        );
        if let Some(c) = &item.discount_minor {
            if Self::cell(row, c).is_ok() {
                line.insert(
                    "discount_minor".into(),
                    Value::from(Self::integer(row, c, "discount_minor")?),
                );
            }
        }
        Ok(Some(Value::Object(line)))
    }

    /// Turns a group of rows (one row, or the lines of one order) into a record. `raw` is the
    /// rows' text as read, which derives the event id when the mapping names no id column.
    pub fn record(&self, rows: &[Row], raw: &str) -> Result<RawTouchpoint, Rejection> {
        let Some(first) = rows.first() else {
            return Err(Rejection {
                field: "record".into(),
                reason: "no rows".into(),
                code: RejectionCode::MissingField,
            });
        };
        let event_type = match (&self.event_type, &self.type_column) {
            (Some(t), _) => t.clone(),
            (None, Some(c)) => Self::cell(first, c)?.to_owned(),
            (None, None) => String::new(),
        };
        let channel = match (&self.channel, &self.channel_column) {
            (Some(c), _) => c.clone(),
            (None, Some(c)) => Self::cell(first, c)?.to_owned(),
            (None, None) => String::new(),
        };
        let source = self.source.clone().unwrap_or_default();
        let id_text = match &self.event_id {
            Some(column) => Self::cell(first, column)?.to_owned(),
            None => raw.to_owned(),
        };
        let event_id = Uuid::parse_str(&id_text).unwrap_or_else(|_| {
            Uuid::new_v5(
                &ROW_NAMESPACE,
                format!("{source}\n{event_type}\n{id_text}").as_bytes(),
            )
        });
        let mut identifiers = BTreeMap::new();
        for (kind, column) in &self.identifiers {
            let values: Vec<String> = rows
                .iter()
                .filter_map(|r| r.get(column))
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            if !values.is_empty() {
                identifiers.insert(kind.clone(), OneOrMany::Many(values));
            }
        }
        let mut fields = Map::new();
        for (field, value) in &self.constants {
            fields.insert(field.clone(), Value::from(value.as_str()));
        }
        for (field, column) in &self.fields {
            let Ok(text) = Self::cell(first, column) else {
                continue;
            };
            let value = if INTEGER_FIELDS.contains(&field.as_str()) {
                Value::from(Self::integer(first, column, field)?)
            } else if BOOLEAN_FIELDS.contains(&field.as_str()) {
                Value::from(matches!(
                    text.to_ascii_lowercase().as_str(),
                    "true" | "1" | "yes" | "y"
                ))
            } else {
                Value::from(text)
            };
            fields.insert(field.clone(), value);
        }
        if self.item.is_some() {
            let items = rows
                .iter()
                .map(|r| self.item(r))
                .collect::<Result<Vec<_>, _>>()?
                .into_iter()
                .flatten()
                .collect::<Vec<_>>();
            if event_type == "cart_item_added" {
                if let Some(line) = items.into_iter().next() {
                    fields.insert("item".into(), line);
                }
            } else {
                fields.insert("items".into(), Value::Array(items));
            }
        }
        for (property, column) in &self.properties {
            if let Ok(v) = Self::cell(first, column) {
                fields.insert(property.clone(), Value::from(v));
            }
        }
        Ok(RawTouchpoint {
            event_id: Some(event_id.to_string()),
            event_type: Some(event_type),
            channel: Some(channel),
            source: Some(source),
            occurred_at: Some(self.time(first)?),
            identifiers,
            fields,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos_mapping() -> Mapping {
        toml::from_str(
            r#"
            type = "order_placed"
            channel = "store"
            source = "pos-shanghai"
            utc_offset = "+08:00"
            event_id = "receipt"
            occurred_at = "sold_at"
            [identifiers]
            phone = "mobile"
            member_card = "card"
            [fields]
            order_id = "receipt"
            [constants]
            currency = "CNY"
            [item]
            sku = "sku"
            quantity = "qty"
            unit_price_minor = "price_fen"
            discount_minor = "discount_fen"
            [properties]
            store_id = "store"
            "#,
        )
        .unwrap()
    }

    fn row(cells: &[(&str, &str)]) -> Row {
        cells
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn the_lines_of_one_receipt_make_one_order() {
        let m = pos_mapping();
        m.check().unwrap();
        let line = |sku: &str, qty: &str| {
            row(&[
                ("receipt", "R-1"),
                ("sold_at", "2026-03-08 09:30:15"),
                ("mobile", "13912340001"),
                ("card", ""),
                ("sku", sku),
                ("qty", qty),
                ("price_fen", "1200"),
                ("discount_fen", ""),
                ("store", "SH-1"),
            ])
        };
        let rows = vec![line("A", "2"), line("B", "1")];
        assert_eq!(m.group_key(&rows[0]).as_deref(), Some("R-1"));
        let r = m.record(&rows, "raw").unwrap();
        assert_eq!(r.occurred_at.as_deref(), Some("2026-03-08T09:30:15+08:00"));
        assert_eq!(r.fields["items"].as_array().unwrap().len(), 2);
        assert_eq!(r.fields["store_id"], "SH-1");
        assert_eq!(r.fields["currency"], "CNY");
        assert!(
            !r.identifiers.contains_key("member_card"),
            "empty cells are no identifiers"
        );
        // The same receipt always gets the same event id.
        assert_eq!(
            r.event_id,
            m.record(&rows, "other raw text").unwrap().event_id
        );
    }

    #[test]
    fn bad_cells_name_their_column() {
        let m = pos_mapping();
        let r = m
            .record(
                &[row(&[
                    ("receipt", "R-2"),
                    ("sold_at", "08/03/2026"),
                    ("mobile", "1"),
                    ("sku", "A"),
                    ("qty", "2"),
                    ("price_fen", "1"),
                ])],
                "raw",
            )
            .unwrap_err();
        assert_eq!(
            (r.field.as_str(), r.code),
            ("sold_at", RejectionCode::InvalidTime)
        );
        let r = m
            .record(
                &[row(&[
                    ("receipt", "R-2"),
                    ("sold_at", "2026-03-08 09:30:15"),
                    ("mobile", "1"),
                    ("sku", "A"),
                    ("qty", "two"),
                    ("price_fen", "1"),
                ])],
                "raw",
            )
            .unwrap_err();
        assert_eq!(r.field, "qty (quantity)");
    }

    #[test]
    fn incomplete_mappings_are_refused() {
        let mut m = pos_mapping();
        m.type_column = Some("kind".into());
        assert!(m
            .check()
            .unwrap_err()
            .contains("exactly one of `type` and `type_column`"));
        let mut m = pos_mapping();
        m.identifiers.clear();
        assert!(m.check().unwrap_err().contains("[identifiers]"));
    }
}
