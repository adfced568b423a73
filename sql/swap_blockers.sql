-- Objects attached to the MAS tables that the swap could not carry over to the tables that
-- replace them. MAS itself creates none of these on the eight tables.
SELECT DISTINCT format('%s %s on %s', kind, name, tbl)
  FROM (
        SELECT 'view' AS kind, v.oid::regclass::text AS name, t.relname AS tbl, t.relnamespace AS ns
          FROM pg_depend d
          JOIN pg_rewrite rw ON rw.oid = d.objid
          JOIN pg_class v    ON v.oid = rw.ev_class
          JOIN pg_class t    ON t.oid = d.refobjid
         WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass
           AND v.oid <> t.oid
        UNION ALL
        SELECT 'trigger', quote_ident(tg.tgname), t.relname, t.relnamespace
          FROM pg_trigger tg JOIN pg_class t ON t.oid = tg.tgrelid
         WHERE NOT tg.tgisinternal
        UNION ALL
        SELECT 'policy', quote_ident(p.polname), t.relname, t.relnamespace
          FROM pg_policy p JOIN pg_class t ON t.oid = p.polrelid
        UNION ALL
        SELECT 'publication', quote_ident(pub.pubname), t.relname, t.relnamespace
          FROM pg_publication_rel pr
          JOIN pg_publication pub ON pub.oid = pr.prpubid
          JOIN pg_class t ON t.oid = pr.prrelid
       ) s
 WHERE ns = current_schema()::regnamespace AND tbl = ANY($1)
 ORDER BY 1
