mod callback_faults;
mod configuration;
mod fake_idp;
mod health;
mod helpers;
mod login;
mod migrations;
mod sessions;
