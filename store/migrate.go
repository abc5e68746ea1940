package store

import (
	"bufio"
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// migrationFiles are the schema's versions, NNNN_name.sql, applied in order. A file may
// start with a directive comment "-- min_server: MAJOR.MINOR" to apply only on servers
// at least that new (see serverVersion).
//
//go:embed migrations/*.sql
var migrationFiles embed.FS

// A migration is one versioned schema change.
type migration struct {
	version    int
	name       string // the file name without .sql
	minServer  serverVersion
	statements []string
}

// Migrate creates or upgrades the gatewatch schema in the connection's database. It
// applies, in order, each embedded migration that schema_migrations does not list,
// and records a version only after all of its statements succeeded.
//
// Running it again changes nothing, and several instances may run it at once: every
// statement is idempotent (CREATE ... IF NOT EXISTS, ADD INDEX IF NOT EXISTS), so two
// instances that both see a version missing both apply it, with the same result as one,
// and both record it; readers of schema_migrations take distinct versions. An instance
// that dies halfway leaves its version unrecorded, so the next run applies the whole
// migration again. There is no lock: ClickHouse has no transactions to hold one, and
// idempotence makes one unnecessary.
//
// A migration gated on a newer server than the one connected is left out, unrecorded,
// so the first Migrate after the server is upgraded applies it. Gated migrations hold
// optional extras (skip indexes, codecs) that nothing later depends on.
func Migrate(ctx context.Context, conn driver.Conn) error {
	_, err := migrate(ctx, conn)
	return err
}

// migrateResult says what one Migrate run did, for logs and tests.
type migrateResult struct {
	server  serverVersion
	applied []string // migration names
	skipped []string // gated on a newer server
}

func migrate(ctx context.Context, conn driver.Conn) (migrateResult, error) {
	var res migrateResult
	all, err := loadMigrations(migrationFiles)
	if err != nil {
		return res, err
	}
	if res.server, err = queryServerVersion(ctx, conn); err != nil {
		return res, err
	}
	const create = `CREATE TABLE IF NOT EXISTS schema_migrations (
    version    UInt32,
    name       String,
    applied_at DateTime('UTC')
) ENGINE = ReplacingMergeTree ORDER BY version`
	if err := execIdempotent(ctx, conn, create); err != nil {
		return res, fmt.Errorf("store: migrate: creating schema_migrations: %w", err)
	}
	done, err := appliedVersions(ctx, conn)
	if err != nil {
		return res, err
	}
	apply, skip := plan(all, done, res.server)
	for _, m := range skip {
		res.skipped = append(res.skipped, m.name)
	}
	for _, m := range apply {
		for i, stmt := range m.statements {
			if err := execIdempotent(ctx, conn, stmt); err != nil {
				return res, fmt.Errorf("store: migrate %s: statement %d: %w", m.name, i+1, err)
			}
		}
		// INSERT ... SELECT, not VALUES: over the native protocol 18.16 answers an
		// INSERT by waiting for data blocks, and Exec sends none, so VALUES hangs.
		err := conn.Exec(ctx, "INSERT INTO schema_migrations (version, name, applied_at) SELECT ?, ?, now()", uint32(m.version), m.name)
		if err != nil {
			return res, fmt.Errorf("store: migrate %s: recording it: %w", m.name, err)
		}
		res.applied = append(res.applied, m.name)
	}
	return res, nil
}

// plan returns the migrations to apply, in version order, and those left out because
// the server is older than they need.
func plan(all []migration, done map[int]bool, server serverVersion) (apply, skip []migration) {
	for _, m := range all {
		switch {
		case done[m.version]:
		case !server.atLeast(m.minServer):
			skip = append(skip, m)
		default:
			apply = append(apply, m)
		}
	}
	return apply, skip
}

func appliedVersions(ctx context.Context, conn driver.Conn) (map[int]bool, error) {
	rows, err := conn.Query(ctx, "SELECT DISTINCT version FROM schema_migrations")
	if err != nil {
		return nil, fmt.Errorf("store: migrate: reading schema_migrations: %w", err)
	}
	defer rows.Close()
	done := map[int]bool{}
	for rows.Next() {
		var v uint32
		if err := rows.Scan(&v); err != nil {
			return nil, fmt.Errorf("store: migrate: reading schema_migrations: %w", err)
		}
		done[int(v)] = true
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("store: migrate: reading schema_migrations: %w", err)
	}
	return done, nil
}

// ClickHouse error codes that an idempotent DDL statement may meet when another
// instance runs the same statement at the same moment: the IF NOT EXISTS check passed
// in both, and the second to create finds the first one's table. ALTER TABLE ... ADD
// COLUMN, which 18.16 cannot qualify with IF NOT EXISTS, meets ILLEGAL_COLUMN ("column
// with this name already exists") whenever the column is there: the statement's work is
// done, by this migration's earlier run or by another instance.
const (
	codeIllegalColumn         = 44
	codeTableAlreadyExists    = 57
	codeDatabaseAlreadyExists = 82
)

func execIdempotent(ctx context.Context, conn driver.Conn, stmt string) error {
	err := conn.Exec(ctx, stmt)
	var ex *clickhouse.Exception
	if errors.As(err, &ex) {
		switch {
		case ex.Code == codeTableAlreadyExists || ex.Code == codeDatabaseAlreadyExists:
			return nil
		case ex.Code == codeIllegalColumn && strings.Contains(ex.Message, "already exists") && isAddColumn(stmt):
			return nil
		}
	}
	return err
}

// isAddColumn reports whether stmt is an ALTER TABLE that only adds columns.
func isAddColumn(stmt string) bool {
	s := strings.ToUpper(strings.Join(strings.Fields(stmt), " "))
	return strings.HasPrefix(s, "ALTER TABLE ") && strings.Contains(s, " ADD COLUMN ") &&
		!strings.Contains(s, " DROP ") && !strings.Contains(s, " MODIFY ")
}

// loadMigrations parses NNNN_name.sql files: statements end with ";" at the end of a
// line, and "--" comment lines are dropped.
func loadMigrations(fsys fs.FS) ([]migration, error) {
	names, err := fs.Glob(fsys, "migrations/*.sql")
	if err != nil {
		return nil, err
	}
	var out []migration
	for _, name := range names {
		b, err := fs.ReadFile(fsys, name)
		if err != nil {
			return nil, err
		}
		m, err := parseMigration(path.Base(name), string(b))
		if err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	slices.SortFunc(out, func(a, b migration) int { return a.version - b.version })
	for i := 1; i < len(out); i++ {
		if out[i].version == out[i-1].version {
			return nil, fmt.Errorf("store: migrations %s and %s share version %d", out[i-1].name, out[i].name, out[i].version)
		}
	}
	return out, nil
}

func parseMigration(file, text string) (migration, error) {
	name := strings.TrimSuffix(file, ".sql")
	num, _, ok := strings.Cut(name, "_")
	v, err := strconv.Atoi(num)
	if !ok || err != nil || v <= 0 {
		return migration{}, fmt.Errorf("store: migration %s: name must be NNNN_name.sql", file)
	}
	m := migration{version: v, name: name}
	var stmt strings.Builder
	sc := bufio.NewScanner(strings.NewReader(text))
	header := true // directives are only read before the first statement
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if rest, ok := strings.CutPrefix(line, "--"); ok {
			key, val, isDirective := strings.Cut(strings.TrimSpace(rest), ":")
			if header && isDirective && key == "min_server" {
				if m.minServer, err = parseServerVersion(strings.TrimSpace(val)); err != nil {
					return migration{}, fmt.Errorf("store: migration %s: min_server: %w", file, err)
				}
			}
			continue
		}
		if line == "" {
			continue
		}
		header = false
		stmt.WriteString(line)
		if s, done := strings.CutSuffix(stmt.String(), ";"); done {
			m.statements = append(m.statements, s)
			stmt.Reset()
			continue
		}
		stmt.WriteByte('\n')
	}
	if strings.TrimSpace(stmt.String()) != "" {
		return migration{}, fmt.Errorf("store: migration %s: last statement does not end with ;", file)
	}
	if len(m.statements) == 0 {
		return migration{}, fmt.Errorf("store: migration %s: no statements", file)
	}
	return m, nil
}

// A serverVersion is a ClickHouse release, as SELECT version() reports it (18.16.1,
// 24.8.4.13). The zero value is older than every release: "no minimum".
type serverVersion struct{ major, minor, patch int }

func parseServerVersion(s string) (serverVersion, error) {
	parts := strings.Split(s, ".")
	if len(parts) < 2 {
		return serverVersion{}, fmt.Errorf("version %q: want MAJOR.MINOR[.PATCH...]", s)
	}
	var n [3]int
	for i := 0; i < len(parts) && i < 3; i++ {
		v, err := strconv.Atoi(parts[i])
		if err != nil || v < 0 {
			return serverVersion{}, fmt.Errorf("version %q: want MAJOR.MINOR[.PATCH...]", s)
		}
		n[i] = v
	}
	return serverVersion{n[0], n[1], n[2]}, nil
}

func (v serverVersion) atLeast(floor serverVersion) bool {
	switch {
	case v.major != floor.major:
		return v.major > floor.major
	case v.minor != floor.minor:
		return v.minor > floor.minor
	}
	return v.patch >= floor.patch
}

func (v serverVersion) String() string { return fmt.Sprintf("%d.%d.%d", v.major, v.minor, v.patch) }

func queryServerVersion(ctx context.Context, conn driver.Conn) (serverVersion, error) {
	var s string
	if err := conn.QueryRow(ctx, "SELECT version()").Scan(&s); err != nil {
		return serverVersion{}, fmt.Errorf("store: asking the clickhouse version: %w", err)
	}
	v, err := parseServerVersion(s)
	if err != nil {
		return v, fmt.Errorf("store: clickhouse %w", err)
	}
	return v, nil
}

// ttlMinServer gates table TTL. TTL arrived in 19.6 and REMOVE TTL later still; 21.3,
// a long-term-support release, has both for certain. Older servers keep the retention
// by dropping expired partitions instead (dropExpiredPartitions).
var ttlMinServer = serverVersion{21, 3, 0}

// retainedTables are the tables whose rows expire with the event archive: the archive
// and its batch markers, the alert history and the Slack threads of its incidents. column is the DateTime that dates a
// row. The archive is partitioned by day of that column, so a partition's day tells
// when all of it has expired. The alert tables are partitioned by month of first_seen
// but dated by when their rows were written (an incident may go on for days, and a
// replayed one may be months old), so partition names the partition expression and a
// partition expires when its newest row has.
var retainedTables = []struct{ table, column, partition string }{
	{"events", "time", ""},
	{"archive_batches", "max_time", ""},
	{"alerts", "recorded", "toYYYYMM(first_seen)"},
	{"alert_deliveries", "updated", "toYYYYMM(first_seen)"},
	{"slack_threads", "updated", "toYYYYMM(updated)"},
}

// applyRetention makes the server expire archived events and alert history retention
// after their time,
// with a table TTL where the server has TTL (ttlMinServer). It reports whether it did;
// if not, the archive writer drops expired partitions itself. A retention of 0 keeps
// events forever and removes a TTL an earlier retention set. The TTL is only changed
// when it differs, because changing it rewrites the table's parts.
func applyRetention(ctx context.Context, conn driver.Conn, retention time.Duration) (ttl bool, err error) {
	v, err := queryServerVersion(ctx, conn)
	if err != nil {
		return false, err
	}
	if !v.atLeast(ttlMinServer) {
		return false, nil
	}
	secs := int64(retention / time.Second)
	for _, rt := range retainedTables {
		var engine string
		err := conn.QueryRow(ctx, "SELECT engine_full FROM system.tables WHERE database = currentDatabase() AND name = ?", rt.table).Scan(&engine)
		if err != nil {
			return false, fmt.Errorf("store: reading the TTL of %s: %w", rt.table, err)
		}
		stmt := retentionStatement(rt.table, rt.column, engine, secs)
		if stmt == "" {
			continue
		}
		if err := conn.Exec(ctx, stmt); err != nil {
			return false, fmt.Errorf("store: setting the retention of %s: %w", rt.table, err)
		}
	}
	return true, nil
}

// retentionStatement returns the ALTER that gives table a TTL of secs seconds on column
// (0: none), judged from the table's engine_full, or "" when it has that TTL already.
// The server prints a TTL of INTERVAL n SECOND as toIntervalSecond(n).
func retentionStatement(table, column, engineFull string, secs int64) string {
	has := strings.Contains(engineFull, " TTL ")
	switch {
	case secs == 0 && has:
		return "ALTER TABLE " + table + " REMOVE TTL"
	case secs > 0 && !strings.Contains(engineFull, fmt.Sprintf("TTL %s + toIntervalSecond(%d)", column, secs)):
		return fmt.Sprintf("ALTER TABLE %s MODIFY TTL %s + toIntervalSecond(%d)", table, column, secs)
	}
	return ""
}

// dropExpiredPartitions drops the partitions of the retained tables whose every row is
// older than the retention at now, and returns how many it dropped. The archive writer
// calls it hourly on servers without TTL.
func dropExpiredPartitions(ctx context.Context, conn driver.Conn, retention time.Duration, now time.Time) (int, error) {
	if retention <= 0 {
		return 0, nil
	}
	cutoff := now.Add(-retention)
	dropped := 0
	for _, rt := range retainedTables {
		expired, err := expiredPartitions(ctx, conn, rt.table, rt.column, rt.partition, cutoff)
		if err != nil {
			return dropped, fmt.Errorf("store: listing partitions of %s: %w", rt.table, err)
		}
		for _, p := range expired {
			// p is all digits (a day or a month), so it is safe in the statement.
			if err := conn.Exec(ctx, "ALTER TABLE "+rt.table+" DROP PARTITION "+p); err != nil {
				return dropped, fmt.Errorf("store: dropping partition %s of %s: %w", p, rt.table, err)
			}
			dropped++
		}
	}
	return dropped, nil
}

// expiredPartitions lists the partitions of table with no row dated at or after cutoff.
// Day partitions are judged by name from system.parts, without reading the table; the
// others by the newest value of column in each.
func expiredPartitions(ctx context.Context, conn driver.Conn, table, column, partition string, cutoff time.Time) ([]string, error) {
	query, args := "SELECT DISTINCT partition, toDateTime(0) FROM system.parts WHERE database = currentDatabase() AND table = ? AND active", []any{table}
	if partition != "" {
		query, args = "SELECT toString("+partition+") AS p, max("+column+") FROM "+table+" GROUP BY p", nil
	}
	rows, err := conn.Query(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var expired []string
	for rows.Next() {
		var (
			p      string
			newest time.Time
		)
		if err := rows.Scan(&p, &newest); err != nil {
			return nil, err
		}
		if partition == "" {
			day, err := time.Parse("20060102", p)
			if err != nil {
				continue // not a day partition: not ours to drop
			}
			newest = day.AddDate(0, 0, 1).Add(-time.Second)
		} else if _, err := strconv.ParseUint(p, 10, 32); err != nil {
			continue
		}
		if newest.Before(cutoff) {
			expired = append(expired, p)
		}
	}
	return expired, rows.Err()
}
