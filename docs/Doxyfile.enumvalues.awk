# Lists the enum values that have no documentation, from doxygen's XML output (run by
# scripts/docs.sh and the CMake `docs` target over <output>/xml/*.xml; exits 1 if there is any).
# Doxygen 1.9.4 (Debian 12) warns about undocumented functions, classes and members but not about
# enum values (WARN_IF_UNDOC_ENUM_VAL came in 1.9.6), so this check fills that gap.
/<qualifiedname>/ {
  enum_name = $0
  gsub(/^[ \t]*<qualifiedname>|<\/qualifiedname>.*$/, "", enum_name)
}
/<enumvalue / { inside = 1; text = ""; value = ""; next }
inside && /<name>/ {
  value = $0
  gsub(/^[ \t]*<name>|<\/name>.*$/, "", value)
  next
}
inside && /<initializer>/ { next }
inside && /<\/enumvalue>/ {
  inside = 0
  if (text == "") {
    print "undocumented enum value: " enum_name "::" value
    missing++
  }
  next
}
inside {
  line = $0
  gsub(/<[^>]*>/, "", line)
  gsub(/[ \t\r]/, "", line)
  text = text line
}
END { exit missing > 0 }
