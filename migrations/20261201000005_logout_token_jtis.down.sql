DROP TABLE logout_token_jtis;
