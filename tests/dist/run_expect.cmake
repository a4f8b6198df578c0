# Runs COMMAND (a list) and checks how it ended: with EXPECT_FAILURE, a non-zero exit code,
# otherwise 0, and either way no sanitizer report; its output (stdout and stderr together) must
# contain every string of EXPECT and every string of ONCE exactly once (only rank 0 prints). A run
# that does not end by itself within 100 s fails (the ctest TIMEOUT is the second guard against a
# hang).
execute_process(COMMAND ${COMMAND} RESULT_VARIABLE code OUTPUT_VARIABLE out ERROR_VARIABLE err TIMEOUT 100)
message("exit: ${code}\n--- stdout\n${out}--- stderr\n${err}")
if(NOT code MATCHES "^[0-9]+$")
  message(FATAL_ERROR "the command did not exit by itself: ${code}")
endif()
# Under the asan preset a sanitizer report also exits non-zero: an expected failure must not
# hide one (a leak or a UBSan report after the expected message).
foreach(report IN ITEMS "ERROR: AddressSanitizer" "ERROR: LeakSanitizer" "runtime error:")
  string(FIND "${out}${err}" "${report}" at)
  if(NOT at EQUAL -1)
    message(FATAL_ERROR "a sanitizer report in the output: ${report}")
  endif()
endforeach()
if(EXPECT_FAILURE AND code EQUAL 0)
  message(FATAL_ERROR "expected a non-zero exit")
elseif(NOT EXPECT_FAILURE AND NOT code EQUAL 0)
  message(FATAL_ERROR "expected exit code 0")
endif()
foreach(expected IN LISTS EXPECT)
  string(FIND "${out}${err}" "${expected}" at)
  if(at EQUAL -1)
    message(FATAL_ERROR "missing from the output: ${expected}")
  endif()
endforeach()
foreach(expected IN LISTS ONCE)
  string(FIND "${out}${err}" "${expected}" first)
  string(FIND "${out}${err}" "${expected}" last REVERSE)
  if(first EQUAL -1 OR NOT first EQUAL last)
    message(FATAL_ERROR "expected exactly once in the output: ${expected}")
  endif()
endforeach()
