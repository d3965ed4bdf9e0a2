"""Core stages are graph-only: a patchwise pipeline runs on a local tf.data service."""


import fcndata.testing as t
from fcndata.distributed import distribute_dataset, select_strategy, start_dispatcher, start_worker
from fcndata.patches import ExtractPatches


def test_patch_pipeline_runs_on_the_tf_data_service():
    dispatcher = start_dispatcher()
    address = dispatcher.target.removeprefix("grpc://")
    worker = start_worker(address)
    ds = t.dataset([(37, 53), (29, 41)]).apply(ExtractPatches(patch_size=(16, 16), stride=(8, 8)))
    local = sorted(tuple(e["origin"].numpy()) + (int(e["source_index"]),) for e in ds)
    remote = sorted(tuple(e["origin"].numpy()) + (int(e["source_index"]),)
                    for e in distribute_dataset(ds, dispatcher.target))
    assert remote == local and len(local) > 10
    del worker


def test_default_strategy_on_one_cpu():
    assert select_strategy().num_replicas_in_sync == 1
