//! Executes event-rule actions (SPEC 8).
//!
//! Owns: the [`dispatcher::Dispatcher`] that claims due deliveries from the
//! outbox, runs their rule's action and records each attempt with its
//! retry; the actions themselves: a webhook ([`webhook::WebhookClient`]:
//! signed, SSRF-checked, never following redirects), a command
//! ([`command::run_command`]: argv only, cleared environment, its own
//! process group, killed whole on timeout), and move, copy and retention
//! ([`file_actions`], through a core session: jailed, counted, permitted).
//!
//! Must not: decide which events match which rule, or write the outbox
//! (that is `dropgate-core`'s event stream, in the audit transaction);
//! touch the database or the disk other than through `core`.

pub mod command;
pub mod dispatcher;
pub mod file_actions;
pub mod webhook;

pub use dispatcher::Dispatcher;
