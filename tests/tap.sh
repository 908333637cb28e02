# Sourced by the shell tests: "ok - ..." / "not ok - ..." lines and their counts; the closing
# "N passed, M failed" line (what CI reads) comes from tap_summary, whose status the test exits with.
pass=0
fail=0
ok() {
    echo "ok - $*"
    pass=$((pass + 1))
}
notok() {
    echo "not ok - $*"
    fail=$((fail + 1))
}
tap_summary() {
    echo "$pass passed, $fail failed"
    [ "$fail" -eq 0 ]
}
