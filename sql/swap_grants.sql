-- The table privileges of the real MAS tables, as GRANT statements to replay on the tables
-- that replace them in the swap: table, statement, and whether it only spells out a NULL ACL
-- (never granted or revoked: the owner's default privileges, from `acldefault`), which needs
-- replaying only where the new table's ACL is not NULL too (see `restore` in src/sink/shadow.rs).
SELECT c.relname::text,
       format('GRANT %s ON TABLE %I TO %s%s',
              a.privilege_type,
              c.relname,
              CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END,
              CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END),
       c.relacl IS NULL
  FROM pg_class c, aclexplode(coalesce(c.relacl, acldefault('r', c.relowner))) a
 WHERE c.relnamespace = current_schema()::regnamespace
   AND c.relname = ANY($1)
   AND c.relkind = 'r'
 ORDER BY 1, 2
