//! Committing prepared batches off the caller's path.
//!
//! A commit holds the log's write lock; preparing a batch (parsing, validating, pseudonymizing,
//! encoding) needs none. [`CommitPipeline`] lets one caller prepare its next batch while the one
//! before commits; [`CommitQueue`] lets many callers share commits: while one commit runs, the
//! batches that arrive wait, and the next commit takes them all. A commit costs mostly per
//! transaction and per index page it touches, so fewer, larger commits store more per second.

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::{Incoming, IngestError, IngestReport, Ingestor, PreparedBatch};

/// Commits prepared batches one after the other in a task of their own, so that the caller can
/// read and prepare the next batch meanwhile. Each batch carries a tag (line numbers, ground
/// truth) handed back with its report.
pub struct CommitPipeline<T> {
    ingestor: Ingestor,
    in_flight: Option<(T, JoinHandle<Result<IngestReport, IngestError>>)>,
}

impl<T> CommitPipeline<T> {
    /// A pipeline committing through `ingestor`.
    pub fn new(ingestor: Ingestor) -> Self {
        Self {
            ingestor,
            in_flight: None,
        }
    }

    /// Starts committing `batch` once the batch before it is stored, and returns that one's
    /// report. If the batch before failed, its tag comes back with the error and `batch` is
    /// not submitted.
    pub async fn submit(
        &mut self,
        tag: T,
        batch: PreparedBatch,
    ) -> Result<Option<(T, IngestReport)>, (T, IngestError)> {
        let previous = self.finish().await?;
        let ingestor = self.ingestor.clone();
        self.in_flight = Some((
            tag,
            tokio::spawn(async move { ingestor.commit(batch).await }),
        ));
        Ok(previous)
    }

    /// Waits for the batch in flight, if any, and returns its report, or its tag and error.
    pub async fn finish(&mut self) -> Result<Option<(T, IngestReport)>, (T, IngestError)> {
        let Some((tag, commit)) = self.in_flight.take() else {
            return Ok(None);
        };
        match commit.await {
            Ok(Ok(report)) => Ok(Some((tag, report))),
            Ok(Err(e)) => Err((tag, e)),
            Err(e) => Err((tag, IngestError::Aborted(e.to_string()))),
        }
    }
}

/// Records one grouped commit takes at most: beyond this, waiting batches go to the next one.
pub const GROUP_RECORDS: usize = 20_000;

/// Batches waiting for the committing task; callers beyond this wait to hand theirs over.
const QUEUE_DEPTH: usize = 64;

/// A batch handed to the committing task, and where its report goes.
struct Job {
    batch: PreparedBatch,
    reply: oneshot::Sender<Result<IngestReport, IngestError>>,
}

/// Commits the batches of concurrent callers together, in the order they arrive. Each caller
/// gets the answers for its own records, and its batch is stored whole or not at all: when a
/// grouped commit fails, every batch in it fails and nothing of them is written.
#[derive(Clone)]
pub struct CommitQueue {
    ingestor: Ingestor,
    jobs: mpsc::Sender<Job>,
}

impl CommitQueue {
    /// Starts the committing task on the current runtime; it ends when the last clone of the
    /// queue is dropped, after committing what it was given.
    pub fn start(ingestor: Ingestor) -> Self {
        let (jobs, waiting) = mpsc::channel(QUEUE_DEPTH);
        tokio::spawn(run(ingestor.clone(), waiting));
        Self { ingestor, jobs }
    }

    /// The ingestor the queue commits through.
    pub fn ingestor(&self) -> &Ingestor {
        &self.ingestor
    }

    /// Prepares `records` on the caller's task, then waits for their commit.
    pub async fn ingest(&self, records: Vec<Incoming>) -> Result<IngestReport, IngestError> {
        self.submit(self.ingestor.prepare(records)).await
    }

    /// Hands a prepared batch to the committing task and waits for its commit.
    pub async fn submit(&self, batch: PreparedBatch) -> Result<IngestReport, IngestError> {
        let (reply, report) = oneshot::channel();
        self.jobs
            .send(Job { batch, reply })
            .await
            .map_err(|_| IngestError::Aborted("the committing task has stopped".into()))?;
        report
            .await
            .map_err(|_| IngestError::Aborted("the committing task dropped the batch".into()))?
    }
}

/// The committing task: takes the first waiting batch and every batch behind it, up to
/// [`GROUP_RECORDS`] records, commits them in one transaction, and answers each caller.
async fn run(ingestor: Ingestor, mut waiting: mpsc::Receiver<Job>) {
    while let Some(first) = waiting.recv().await {
        let mut records = first.batch.len();
        let mut group = vec![first];
        while records < GROUP_RECORDS {
            match waiting.try_recv() {
                Ok(job) => {
                    records += job.batch.len();
                    group.push(job);
                }
                Err(_) => break,
            }
        }
        let (batches, replies): (Vec<PreparedBatch>, Vec<_>) =
            group.into_iter().map(|job| (job.batch, job.reply)).unzip();
        // A task of its own, so that a panic fails this group, not the queue.
        let committer = ingestor.clone();
        let result = tokio::spawn(async move { committer.commit_group(batches).await }).await;
        match result {
            Ok(Ok(reports)) => {
                for (reply, report) in replies.into_iter().zip(reports) {
                    // A caller that went away (its request was cancelled) needs no answer.
                    let _ = reply.send(Ok(report));
                }
            }
            Ok(Err(err)) => {
                let (code, reason) = (err.code(), err.to_string());
                for reply in replies {
                    let _ = reply.send(Err(IngestError::Grouped {
                        code,
                        reason: reason.clone(),
                    }));
                }
            }
            Err(panicked) => {
                for reply in replies {
                    let _ = reply.send(Err(IngestError::Aborted(panicked.to_string())));
                }
            }
        }
    }
}
