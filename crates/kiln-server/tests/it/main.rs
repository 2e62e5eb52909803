//! The server's integration tests: the real router and middleware over a real socket.
//! One binary; a module per area. New tests go in the module of their area, or in a new one.

mod access_policy;
mod admin;
mod auth;
mod backend_services;
mod binary;
mod bulk;
mod bundle;
mod concurrency;
mod conditional;
mod contained;
mod crud;
mod custom_params;
mod errors;
mod fhirpath_patch;
mod history;
mod inferno;
mod oauth;
mod openapi;
mod profile;
mod registration;
mod search;
mod smart;
mod support;
mod synthea;
mod tenancy;
mod terminology;
mod terminology_ops;
mod tls;
