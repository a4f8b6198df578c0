# A data-parallel run stopped at step 4 and resumed (each time under mpirun) must end with the same
# model.safetensors, byte for byte, as the same run made in one go: same shards, same per-rank
# noise (rank 0's Rng from the checkpoint, the others' from (seed, step, rank)), same numbers.
# MPIRUN and TRAIN are lists; OUT a scratch folder.
file(REMOVE_RECURSE ${OUT})
foreach(run IN ITEMS "--stop-at;4;--out;${OUT}/split" "--resume;--out;${OUT}/split" "--out;${OUT}/whole")
  execute_process(COMMAND ${MPIRUN} ${TRAIN} ${run} RESULT_VARIABLE code OUTPUT_VARIABLE out ERROR_VARIABLE err
                  TIMEOUT 100)
  if(NOT code EQUAL 0)
    message(FATAL_ERROR "train ${run} ended with ${code}\n${out}\n${err}")
  endif()
endforeach()
execute_process(COMMAND ${CMAKE_COMMAND} -E compare_files ${OUT}/split/model.safetensors ${OUT}/whole/model.safetensors
                RESULT_VARIABLE differ)
if(NOT differ EQUAL 0)
  message(FATAL_ERROR "the resumed run's model differs from the run made in one go")
endif()
message("resumed and whole runs wrote the same model.safetensors")
