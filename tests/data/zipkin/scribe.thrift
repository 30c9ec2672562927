# Scribe's logging interface as Zipkin's Scribe collector serves it (the test's collector).
enum ResultCode {
  OK,
  TRY_LATER
}

struct LogEntry {
  1: string category,
  2: string message
}

service scribe {
  ResultCode Log(1: list<LogEntry> messages);
}
