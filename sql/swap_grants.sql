-- The table privileges of the real MAS tables, as GRANT statements to replay on the tables
-- that replace them in the swap.
SELECT format('GRANT %s ON TABLE %I TO %s%s',
              a.privilege_type,
              c.relname,
              CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END,
              CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END)
  FROM pg_class c, aclexplode(c.relacl) a
 WHERE c.relnamespace = current_schema()::regnamespace
   AND c.relname = ANY($1)
   AND c.relkind = 'r'
 ORDER BY 1
