//! dirigent: a supervisor daemon for AI coding-agent CLIs.
//!
//! The modules follow the flow of a task:
//! [`inbox`] (watch + scan) → [`claim`] (read, parse, accept or reject) → [`engine`] (schedule
//! under limits) → [`spawn`] (run one attempt in its own process group) → [`judge`] (verdict) →
//! next agent, or [`result`] / [`escalate`] → [`ledger`] (durable events) → [`state`] (the fold
//! over events) → [`progress`] (`progress.md`).
//!
//! [`engine::run`] is the entry point; it takes a `shutdown` future so tests can run the whole
//! daemon in-process.

pub mod accept;
pub mod advice;
pub mod api;
pub mod by_shape;
pub mod catalog;
pub mod claim;
pub mod class;
pub mod compact;
pub mod config;
pub mod confined;
pub mod control;
pub mod credentials;
pub mod dashboard;
pub mod doctor;
pub mod duration;
pub mod editing;
pub mod engine;
pub mod escalate;
pub mod fault;
pub mod fleet;
pub mod follow;
pub mod fsutil;
pub mod git;
pub mod http;
pub mod http_conns;
pub mod http_events;
pub mod http_views;
pub mod inbox;
pub mod integrity;
pub mod isolation;
pub mod judge;
pub mod ledger;
pub mod mcp;
pub mod notifications;
pub mod openai;
pub mod packed_spec;
pub mod preset;
pub mod process_group;
pub mod progress;
pub mod protocol;
pub mod reaper;
pub mod result;
pub mod routing;
pub mod run_view;
pub mod runner;
pub mod service;
pub mod side_command;
pub mod signals;
pub mod spawn;
pub mod state;
pub mod stats;
pub mod strict_json;
pub mod submit;
pub mod suggest;
pub mod supervise;
pub mod task;
pub mod task_file;
pub mod task_log;
pub mod terminal;
pub mod usage;
pub mod watch;
pub mod web;
pub mod workdir;
pub mod workflow;
pub mod workspace;
