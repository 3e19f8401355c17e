DROP VIEW logins;
