//! `patron import`: CSV and NDJSON exports streamed into ingestion, batch by batch, in constant
//! memory, with a progress bar. Event ids come from the file (or from each row's content), so
//! importing a file again stores nothing twice.

pub mod mapping;

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use patron_domain::touchpoint::{Rejection, RejectionCode};
use serde::Serialize;
use serde_json::Value;
use thiserror::Error;

use self::mapping::{Format, Mapping, Row};
use crate::ingest::{
    check_record_bounds, CommitPipeline, Incoming, IngestError, IngestReport, Ingestor,
    RecordOutcome,
};

/// Rejections listed in an import's summary (all of them are in the quarantine).
const LISTED_REJECTIONS: usize = 20;

/// Why an import stopped.
#[derive(Debug, Error)]
pub enum ImportError {
    /// The file cannot be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: String,
        /// The IO error.
        source: std::io::Error,
    },
    /// The CSV cannot be parsed at all.
    #[error("{path} is not readable CSV")]
    Csv {
        /// The file.
        path: String,
        /// The parser's error.
        source: csv::Error,
    },
    /// The file needs a mapping.
    #[error("{0}")]
    Usage(String),
    /// A batch could not be stored; the batches before it are stored.
    #[error("stopped at line {line}: {source}")]
    Ingest {
        /// The first line of the batch that failed.
        line: u64,
        /// Why.
        source: IngestError,
    },
}

/// One refused record in an import's summary.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RejectedLine {
    /// The line of the file where the record starts.
    pub line: u64,
    /// The field (or column) at fault.
    pub field: String,
    /// Why.
    pub reason: String,
}

/// What an import did.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ImportSummary {
    /// Records read (an order spread over several lines is one record).
    pub records: u64,
    /// Records stored now.
    pub accepted: u64,
    /// Records stored before (a re-run, or repeated ids).
    pub duplicates: u64,
    /// Records refused and kept in the quarantine.
    pub rejected: u64,
    /// Customers merged by the import.
    pub merges: u64,
    /// Customers started by the import.
    pub new_customers: u64,
    /// Wall-clock time, in seconds.
    pub seconds: f64,
    /// Records read per second.
    pub records_per_s: f64,
    /// The first refused records, by line.
    pub first_rejections: Vec<RejectedLine>,
}

/// A record and the line it starts at.
struct Pending {
    line: u64,
    incoming: Incoming,
}

struct Batcher<'a> {
    ingestor: &'a Ingestor,
    mapping: Option<&'a Mapping>,
    pipeline: CommitPipeline<Vec<u64>>,
    batch: usize,
    pending: Vec<Pending>,
    summary: ImportSummary,
}

impl Batcher<'_> {
    /// Names the column behind a record field, for people who know the file, not the record:
    /// `identifiers.phone[0]` becomes `mobile (identifiers.phone[0])`.
    fn column_of(&self, field: &str) -> String {
        let Some(mapping) = self.mapping else {
            return field.to_owned();
        };
        let base = field.split('[').next().unwrap_or(field);
        let column = match base.split_once('.') {
            Some(("identifiers", kind)) => mapping.identifiers.get(kind),
            _ => mapping
                .fields
                .get(base)
                .or_else(|| (base == "occurred_at").then_some(&mapping.occurred_at)),
        };
        match column {
            Some(column) => format!("{column} ({field})"),
            None => field.to_owned(),
        }
    }

    async fn push(&mut self, line: u64, incoming: Incoming) -> Result<(), ImportError> {
        self.pending.push(Pending { line, incoming });
        if self.pending.len() >= self.batch {
            self.flush().await?;
        }
        Ok(())
    }

    /// Prepares the pending records and hands them to the commit pipeline: reading and
    /// preparing the next batch overlaps with storing this one.
    async fn flush(&mut self) -> Result<(), ImportError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        let mut lines = Vec::with_capacity(pending.len());
        let incoming: Vec<Incoming> = pending
            .into_iter()
            .map(|p| {
                lines.push(p.line);
                p.incoming
            })
            .collect();
        let prepared = self.ingestor.prepare(incoming);
        let done = self
            .pipeline
            .submit(lines, prepared)
            .await
            .map_err(failed_batch)?;
        if let Some((lines, report)) = done {
            self.count(&lines, &report);
        }
        Ok(())
    }

    /// Waits for the commit in flight and counts its answers.
    async fn settle(&mut self) -> Result<(), ImportError> {
        let done = self.pipeline.finish().await.map_err(failed_batch)?;
        if let Some((lines, report)) = done {
            self.count(&lines, &report);
        }
        Ok(())
    }

    /// Counts a stored batch's answers.
    fn count(&mut self, lines: &[u64], report: &IngestReport) {
        self.summary.records += lines.len() as u64;
        self.summary.accepted += report.accepted as u64;
        self.summary.duplicates += report.duplicates as u64;
        self.summary.rejected += report.rejected as u64;
        self.summary.merges += report.merges as u64;
        self.summary.new_customers += report.new_customers as u64;
        for (line, outcome) in lines.iter().zip(&report.records) {
            if let RecordOutcome::Rejected { rejection, .. } = outcome {
                if self.summary.first_rejections.len() < LISTED_REJECTIONS {
                    let field = self.column_of(&rejection.field);
                    self.summary.first_rejections.push(RejectedLine {
                        line: *line,
                        field,
                        reason: rejection.reason.clone(),
                    });
                }
            }
        }
    }
}

/// The error of a batch that could not be stored, named by its first line.
fn failed_batch((lines, source): (Vec<u64>, IngestError)) -> ImportError {
    ImportError::Ingest {
        line: lines.first().copied().unwrap_or_default(),
        source,
    }
}

fn progress(bytes: u64) -> ProgressBar {
    let bar = ProgressBar::new(bytes);
    bar.set_style(
        ProgressStyle::with_template(
            "importing [{bar:40}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec}, eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar
}

pub(crate) fn row_of_json(text: &str) -> Result<Row, Rejection> {
    let value: serde_json::Map<String, Value> =
        serde_json::from_str(text).map_err(|e| Rejection {
            field: "record".into(),
            reason: format!("not a JSON object: {e}"),
            code: RejectionCode::Malformed,
        })?;
    Ok(value
        .into_iter()
        .map(|(k, v)| {
            let text = match v {
                Value::String(s) => s,
                Value::Null => String::new(),
                other => other.to_string(),
            };
            (k, text)
        })
        .collect())
}

/// Imports a file into `ingestor`'s store, `batch` records per transaction.
pub async fn import_file(
    ingestor: &Ingestor,
    path: &Path,
    mapping: Option<&Mapping>,
    batch: usize,
) -> Result<ImportSummary, ImportError> {
    let started = Instant::now();
    let read_err = |source| ImportError::Read {
        path: path.display().to_string(),
        source,
    };
    let format = mapping
        .and_then(|m| m.format)
        .or_else(|| match path.extension().and_then(|e| e.to_str()) {
            Some("csv") => Some(Format::Csv),
            Some("ndjson" | "jsonl" | "json") => Some(Format::Ndjson),
            _ => None,
        })
        .ok_or_else(|| {
            ImportError::Usage(format!(
                "cannot tell the format of {}: name it .csv or .ndjson, or set `format` in the mapping",
                path.display()
            ))
        })?;
    let file = File::open(path).map_err(read_err)?;
    let size = file.metadata().map_err(read_err)?.len();
    let bar = progress(size);
    let mut batcher = Batcher {
        ingestor,
        mapping,
        pipeline: CommitPipeline::new(ingestor.clone()),
        batch: batch.max(1),
        pending: Vec::new(),
        summary: ImportSummary::default(),
    };
    match (format, mapping) {
        (Format::Csv, None) => {
            return Err(ImportError::Usage(
                "a CSV file needs --mapping MAP.toml to say which column is which field".into(),
            ))
        }
        (Format::Ndjson, None) => {
            let mut lines = Lines::new(file);
            while let Some((number, text)) = lines.next(&bar).map_err(read_err)? {
                batcher.push(number, Incoming::json(text)).await?;
            }
        }
        (Format::Ndjson, Some(mapping)) => {
            let mut group = Group::default();
            let mut lines = Lines::new(file);
            while let Some((number, text)) = lines.next(&bar).map_err(read_err)? {
                match check_record_bounds(&text).and_then(|()| row_of_json(&text)) {
                    Ok(row) => group.add(mapping, &mut batcher, number, row, text).await?,
                    Err(rejection) => {
                        group.flush(mapping, &mut batcher).await?;
                        batcher
                            .push(
                                number,
                                Incoming {
                                    received: text,
                                    parsed: Err(rejection),
                                },
                            )
                            .await?;
                    }
                }
            }
            group.flush(mapping, &mut batcher).await?;
        }
        (Format::Csv, Some(mapping)) => {
            let mut reader = csv::ReaderBuilder::new()
                .flexible(true)
                .from_reader(BufReader::new(file));
            let csv_err = |source| ImportError::Csv {
                path: path.display().to_string(),
                source,
            };
            let headers = reader.headers().map_err(csv_err)?.clone();
            let mut group = Group::default();
            let mut record = csv::StringRecord::new();
            let mut last = 0u64;
            loop {
                match reader.read_record(&mut record) {
                    Ok(false) => break,
                    Ok(true) => {}
                    Err(e) => {
                        // A row the parser cannot read (bad quoting, invalid UTF-8) is refused
                        // on its own; the import goes on.
                        let number = e.position().map_or(0, |p| p.line());
                        group.flush(mapping, &mut batcher).await?;
                        let rejection = Rejection {
                            field: "record".into(),
                            reason: format!("unreadable CSV row: {e}"),
                            code: RejectionCode::Malformed,
                        };
                        batcher
                            .push(
                                number,
                                Incoming {
                                    received: format!("line {number}"),
                                    parsed: Err(rejection),
                                },
                            )
                            .await?;
                        continue;
                    }
                }
                let position = reader.position();
                bar.inc(position.byte().saturating_sub(last));
                last = position.byte();
                let number = record.position().map_or(position.line(), |p| p.line());
                let row: Row = headers
                    .iter()
                    .zip(record.iter())
                    .map(|(h, v)| (h.to_owned(), v.to_owned()))
                    .collect();
                let raw = record.iter().collect::<Vec<_>>().join(",");
                group.add(mapping, &mut batcher, number, row, raw).await?;
            }
            group.flush(mapping, &mut batcher).await?;
        }
    }
    batcher.flush().await?;
    batcher.settle().await?;
    bar.finish_and_clear();
    let mut summary = batcher.summary;
    summary.seconds = started.elapsed().as_secs_f64();
    summary.records_per_s = summary.records as f64 / summary.seconds.max(1e-9);
    Ok(summary)
}

/// The non-blank lines of a file with their numbers, counted on a progress bar.
struct Lines {
    reader: BufReader<File>,
    buffer: String,
    number: u64,
}

impl Lines {
    fn new(file: File) -> Self {
        Self {
            reader: BufReader::new(file),
            buffer: String::new(),
            number: 0,
        }
    }

    fn next(&mut self, bar: &ProgressBar) -> std::io::Result<Option<(u64, String)>> {
        loop {
            self.buffer.clear();
            let n = self.reader.read_line(&mut self.buffer)?;
            if n == 0 {
                return Ok(None);
            }
            self.number += 1;
            bar.inc(n as u64);
            let text = self.buffer.trim_end_matches(['\n', '\r']);
            if !text.trim().is_empty() {
                return Ok(Some((self.number, text.to_owned())));
            }
        }
    }
}

/// Consecutive rows that make one record (the lines of one order).
#[derive(Default)]
struct Group {
    key: Option<String>,
    line: u64,
    rows: Vec<Row>,
    raw: Vec<String>,
}

impl Group {
    async fn add(
        &mut self,
        mapping: &Mapping,
        batcher: &mut Batcher<'_>,
        line: u64,
        row: Row,
        raw: String,
    ) -> Result<(), ImportError> {
        let key = mapping.group_key(&row);
        if self.rows.is_empty() || key.is_none() || key != self.key {
            self.flush(mapping, batcher).await?;
            self.key = key;
            self.line = line;
        }
        self.rows.push(row);
        self.raw.push(raw);
        Ok(())
    }

    async fn flush(
        &mut self,
        mapping: &Mapping,
        batcher: &mut Batcher<'_>,
    ) -> Result<(), ImportError> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let raw = self.raw.join("\n");
        let parsed = mapping.record(&self.rows, &raw);
        self.rows.clear();
        self.raw.clear();
        self.key = None;
        batcher
            .push(
                self.line,
                Incoming {
                    received: raw,
                    parsed,
                },
            )
            .await
    }
}
