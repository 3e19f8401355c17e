mod account;
mod admin;
mod browser;
mod cache;
mod callback_faults;
mod configuration;
mod deployment;
mod fake_idp;
mod hardening;
mod health;
mod helpers;
mod login;
mod migrations;
mod properties;
#[path = "../support/local_provider.rs"]
#[allow(dead_code)]
mod provider_login;
mod providers;
mod races;
mod real_idp;
mod refresh;
mod rotation;
mod sessions;
mod several_providers;
mod shop;
mod shutdown;
