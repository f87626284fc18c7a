// Package s3 is the repository backend on an S3-compatible object store
// (AWS S3, MinIO, Ceph RGW, Garage, Versity's gateway, ...), reached with
// github.com/minio/minio-go/v7.
//
// Objects map one to one onto S3 objects under an optional key prefix in
// one bucket. A PUT is atomic and durable once the server acknowledges it,
// so Put needs no temporary object and Sync has nothing to do. Range reads
// serve the repository's partial gets; missing objects (NoSuchKey) wrap
// target.ErrNotFound, while a missing bucket is an error of its own so that
// a wrong bucket name is never read as an empty repository.
package s3
