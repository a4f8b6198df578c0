# A 2-rank training run (MPIRUN + TRAIN, a list; data or expert parallel) writes its checkpoint to
# OUT; EVAL (a list, one process, no MPI) then measures that checkpoint on the val split. Rank 0's
# final report measured the same model (gathered from the ranks) on the same split with the same
# batches, so the two val losses must be the same number: the checkpoint holds the 2-rank model.
file(REMOVE_RECURSE ${OUT})
execute_process(COMMAND ${MPIRUN} ${TRAIN} --out ${OUT} RESULT_VARIABLE code OUTPUT_VARIABLE out ERROR_VARIABLE err
                TIMEOUT 100)
message("--- train (exit ${code})\n${out}${err}")
if(NOT code EQUAL 0)
  message(FATAL_ERROR "the 2-rank training run failed")
endif()
foreach(expected IN LISTS EXPECT)
  string(FIND "${out}" "${expected}" at)
  if(at EQUAL -1)
    message(FATAL_ERROR "missing from the training output: ${expected}")
  endif()
endforeach()
# The final report's first row is val: "val  loss 1.2345 | exact match ...".
if(NOT out MATCHES "\n  val +loss ([0-9]+\\.[0-9]+) \\| exact match")
  message(FATAL_ERROR "no val loss in the final report")
endif()
set(trained_loss ${CMAKE_MATCH_1})
execute_process(COMMAND ${EVAL} --model ${OUT} RESULT_VARIABLE code OUTPUT_VARIABLE eval_out ERROR_VARIABLE eval_err
                TIMEOUT 100)
message("--- eval in one process (exit ${code})\n${eval_out}${eval_err}")
if(NOT code EQUAL 0)
  message(FATAL_ERROR "the single-process eval of the 2-rank checkpoint failed")
endif()
if(NOT eval_out MATCHES "loss +([0-9]+\\.[0-9]+)")
  message(FATAL_ERROR "no loss in the eval output")
endif()
if(NOT CMAKE_MATCH_1 STREQUAL trained_loss)
  message(FATAL_ERROR "one process measures val loss ${CMAKE_MATCH_1}, the 2-rank run ${trained_loss}")
endif()
message("the checkpoint gives val loss ${trained_loss} in one process, as on 2 ranks")
